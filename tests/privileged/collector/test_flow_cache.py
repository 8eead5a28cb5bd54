"""The per-CPU flow cache in a real kernel: nothing lost or counted twice across drains,
slot collisions, CPUs and a full flow map (ground truth: an AF_PACKET capture)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from flowscope.core.records import RawFlow

from tests.privileged.collector.node import TRAFFIC, Capture, Node, finish, wait_listening
from tests.privileged.collector.programs import attached

pytestmark = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="needs two CPUs to move a sender between them"
)


@pytest.fixture
def cache_node() -> Iterator[Node]:
    with Node(tag=f"cfc{os.getpid()}", ipv6=False).built() as built:
        yield built


def pin(pid: int, cpu: int) -> None:
    """Move a process (all its threads) to one CPU; its packets' TC runs follow it there."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True,
                   capture_output=True)  # fmt: skip


def sums(flows: list[RawFlow], ident: tuple[int, str, str, int, int]) -> tuple[int, int, int, int]:
    """(packets, bytes, rpackets, rbytes) of one flow, seen from its client, over records."""
    proto, src, dst, sport, dport = ident
    out = [0, 0, 0, 0]
    for f in flows:
        if f.proto != proto:
            continue
        if (f.src, f.dst, f.sport, f.dport) == (src, dst, sport, dport):
            counts = (f.packets, f.bytes, f.rpackets, f.rbytes)
        elif (f.src, f.dst, f.sport, f.dport) == (dst, src, dport, sport):
            counts = (f.rpackets, f.rbytes, f.packets, f.bytes)
        else:
            continue
        out = [a + b for a, b in zip(out, counts, strict=True)]
    return out[0], out[1], out[2], out[3]


def test_a_connection_over_many_drains_and_both_cpus_is_counted_exactly(
    cache_node: Node,
) -> None:
    """A TCP transfer whose client moves between CPU 0 and 1 every few ms while the map
    and cache are drained every ~15 ms: the records' sums equal the capture, and no drain
    has two records of the connection."""
    from flowscope.collector.loading import FlowProgramConfig

    client, server = cache_node.pods
    with attached(
        cache_node, FlowProgramConfig(max_flows=1024), [client.host_if, server.host_if]
    ) as kernel:
        assert kernel.program.cache is not None
        capture = Capture(client.host_if)
        srv = cache_node.start(server, "tcp-server", server.ip4, "8081", "200000")
        wait_listening(srv)
        records: list[RawFlow] = []
        per_drain: list[int] = []
        stop = threading.Event()

        def drain_often() -> None:
            while not stop.is_set():
                flows = kernel.drainer.drain().flows
                records.extend(flows)
                per_drain.append(sum(1 for f in flows if f.proto == 6))
                time.sleep(0.015)

        drainer = threading.Thread(target=drain_often)
        drainer.start()
        try:
            proc = cache_node.start(client, "tcp-client", server.ip4, "8081", "1800000", "60", "0.01")  # fmt: skip
            moves = 0
            while proc.poll() is None:
                pin(proc.pid, moves % 2)
                moves += 1
                time.sleep(0.005)
            sent = finish(proc)
            assert finish(srv)["received"] == 1_800_000
            time.sleep(0.2)
        finally:
            stop.set()
            drainer.join()
        capture.stop()
        records += kernel.drainer.drain().flows
    fid = (6, client.ip4, server.ip4, int(sent["sport"]), 8081)  # type: ignore[call-overload]
    rid = (6, server.ip4, client.ip4, 8081, int(sent["sport"]))  # type: ignore[call-overload]
    assert sums(records, fid) == (
        capture.packets[fid],
        capture.bytes[fid],
        capture.packets[rid],
        capture.bytes[rid],
    )
    assert capture.bytes[fid] > 1_800_000 and moves > 10
    assert len(per_drain) > 20 and max(per_drain) <= 1  # one record per interval at most


def test_flows_colliding_in_a_two_slot_cache_are_counted_exactly(cache_node: Node) -> None:
    """Two slots per half: almost every packet of 300 interleaved flows takes a slot
    another flow holds, so flows move between cache and map all the time; sprays from
    CPU 0 and CPU 1, drains in between. Every flow is one record per drain, and its
    packets over the drains are the capture's."""
    from flowscope.collector.loading import FlowProgramConfig

    client, server = cache_node.pods
    config = FlowProgramConfig(max_flows=4096, cache_slots=2)
    with attached(cache_node, config, [client.host_if]) as kernel:
        kernel.drainer.drain()
        capture = Capture(client.host_if)
        records: list[RawFlow] = []
        for round_ in range(6):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", client.ns, "taskset", "-c", str(round_ % 2),
                 sys.executable, TRAFFIC, "udp-spray", server.ip4, "30000", "300", "41000"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            finish(proc)
            if round_ % 2:
                flows = kernel.drainer.drain().flows
                idents = [(f.src, f.sport, f.dst, f.dport) for f in flows if f.proto == 17]
                assert len(idents) == len(set(idents))
                records += flows
        time.sleep(0.2)
        capture.stop()
        records += kernel.drainer.drain().flows
    counted: Counter[tuple[int, str, str, int, int]] = Counter()
    for f in records:
        if f.proto == 17 and f.src == client.ip4:
            counted[(17, f.src, f.dst, f.sport, f.dport)] += f.packets
    truth = {fid: n for fid, n in capture.packets.items() if fid[1] == client.ip4 and fid[0] == 17}
    assert len(truth) == 300 and set(truth.values()) == {6}
    assert dict(counted) == truth


def test_map_full_with_the_cache_counts_every_packet_once(cache_node: Node) -> None:
    """A 16-entry map behind a 4-slot cache: every packet is in a record or in the map-full
    counters, never both, never neither (the rule of the map-only test_overflow)."""
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import read_counters

    client, server = cache_node.pods
    config = FlowProgramConfig(max_flows=16, cache_slots=4)
    with attached(cache_node, config, [client.host_if], chunk=8) as kernel:
        kernel.drainer.drain()
        before = read_counters(kernel.program.counters)
        capture = Capture(client.host_if)
        for cpu in (0, 1, 0):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", client.ns, "taskset", "-c", str(cpu),
                 sys.executable, TRAFFIC, "udp-spray", server.ip4, "20000", "200"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            finish(proc)
        time.sleep(0.3)
        capture.stop()
        flows = kernel.drainer.drain().flows
        after = read_counters(kernel.program.counters)
    lost_packets = after.map_full_packets - before.map_full_packets
    lost_bytes = after.map_full_bytes - before.map_full_bytes
    assert lost_packets > 0
    assert len(flows) <= 16 + 2 * 4 * (os.cpu_count() or 1)
    bridge_mac = bytes.fromhex(
        cache_node.hx("cat", "/sys/class/net/br0/address").strip().replace(":", "")
    )
    origins = [o for o in capture.by_origin_packets if o[0] == "ingress" or o[1] == bridge_mac]
    assert sum(f.packets + f.rpackets for f in flows) + lost_packets == sum(
        capture.by_origin_packets[o] for o in origins
    )
    assert sum(f.bytes + f.rbytes for f in flows) + lost_bytes == sum(
        capture.by_origin_bytes[o] for o in origins
    )


def test_without_user_space_the_program_counts_in_the_map_only(cache_node: Node) -> None:
    """Generation 0 (no FlowCache opened, e.g. a bench attaching flows.c alone): the
    cache is bypassed, so a drainer without it still sees every packet."""
    from flowscope.collector.loading import FlowProgramConfig

    client, server = cache_node.pods
    with attached(
        cache_node, FlowProgramConfig(max_flows=1024), [client.host_if, server.host_if]
    ) as kernel:
        cache = kernel.program.cache
        assert cache is not None
        cache._generation.value = 0  # as before user space set it
        kernel.drainer.cache = None
        kernel.drainer.drain()
        srv = cache_node.start(server, "udp-echo", server.ip4, "5354", "9")
        wait_listening(srv)
        sent = cache_node.run(client, "udp-client", server.ip4, "5354", "9", "100")
        finish(srv)
        time.sleep(0.1)
        flows = kernel.drainer.drain().flows
    ident = (17, client.ip4, server.ip4, int(sent["sport"]), 5354)  # type: ignore[call-overload]
    assert sums(flows, ident) == (9, 9 * 128, 9, 9 * 128)
