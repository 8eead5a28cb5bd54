"""Draining never loses packets the program counts meanwhile.

The drain used to take entries out of the very map the program adds to: a packet added
between the batch's copy and delete of its entry was lost. One UDP flow is sent from a
pod on CPU 0 while the map is drained in a tight loop on CPU 1; every datagram must be
in a record or in the map-full counter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.collector.node import Node, sh
from tests.privileged.collector.programs import Kernel, attached

DATAGRAMS = 150_000
TRAFFIC = str(Path(__file__).with_name("traffic.py"))


@pytest.fixture
def race_node() -> Iterator[Node]:
    with Node(tag=f"cfd{os.getpid()}", ipv6=False).built() as built:
        yield built


def tx_dropped(pod_ns: str) -> int:
    path = "/sys/class/net/eth0/statistics/tx_dropped"
    return int(sh("ip", "netns", "exec", pod_ns, "cat", path))


def drain_until(kernel: Kernel, stop: threading.Event, udp_packets: list[int]) -> None:
    """Drain as fast as possible on CPU 1 (the sender runs on CPU 0) until ``stop``."""
    os.sched_setaffinity(0, {1})
    while not stop.is_set():
        flows = kernel.drainer.drain().flows
        udp_packets[0] += sum(f.packets + f.rpackets for f in flows if f.proto == 17)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the race needs two CPUs")
def test_packets_counted_while_the_map_is_drained_are_not_lost(race_node: Node) -> None:
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import read_counters

    client, server = race_node.pods
    # The map alone: no flow cache (the collector's fallback without membarrier; with
    # the cache, slots moved into the map take the same path).
    config = FlowProgramConfig(max_flows=1024, cache_slots=0)
    with attached(race_node, config, [client.host_if]) as kernel:
        udp_packets = [0]
        stop = threading.Event()
        dropped = tx_dropped(client.ns)
        drainer = threading.Thread(target=drain_until, args=(kernel, stop, udp_packets))
        drainer.start()
        try:
            subprocess.run(
                ["taskset", "-c", "0", "ip", "netns", "exec", client.ns, sys.executable,
                 TRAFFIC, "udp-repeat", server.ip4, "9999", str(DATAGRAMS)],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
        finally:
            stop.set()
            drainer.join()
        with race_node.inside():
            flows = kernel.drainer.drain().flows
        udp_packets[0] += sum(f.packets + f.rpackets for f in flows if f.proto == 17)
        counters = read_counters(kernel.program.counters)
    sent = DATAGRAMS - (tx_dropped(client.ns) - dropped)  # veth drops never reach TC
    assert udp_packets[0] + counters.map_full_packets == sent
