"""A flow map sized tiny: packets of flows that do not fit are counted, not lost silently."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.privileged.collector.node import Capture, Node
from tests.privileged.collector.programs import attached


@pytest.fixture
def small_node() -> Iterator[Node]:
    with Node(tag=f"cfo{os.getpid()}", ipv6=False).built() as built:
        yield built


def test_map_full_packets_and_bytes_are_counted(small_node: Node) -> None:
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import read_counters

    client, server = small_node.pods
    # The map alone (no flow cache, which would hold flows the map has no room for:
    # test_flow_cache.py has the same rule with the cache in play).
    config = FlowProgramConfig(max_flows=16, cache_slots=0)
    with attached(small_node, config, [client.host_if], chunk=8) as kernel:
        capture = Capture(client.host_if)
        small_node.run(client, "udp-spray", server.ip4, "20000", "200")
        time.sleep(0.3)
        capture.stop()
        flows = kernel.drainer.drain().flows
        counters = read_counters(kernel.program.counters)
    assert len(flows) == 16
    assert counters.map_full_packets > 0
    # Only the client's veth is attached (IPv6 is off: no link-local chatter). Ground
    # truth of what it must count: every IP packet it received and every one it sent
    # that the host itself originated (source MAC of the bridge), but not the packets the
    # bridge forwarded from the server (the server's veth counts those).
    bridge_mac = bytes.fromhex(
        small_node.hx("cat", "/sys/class/net/br0/address").strip().replace(":", "")
    )
    origins = [o for o in capture.by_origin_packets if o[0] == "ingress" or o[1] == bridge_mac]
    total_packets = sum(capture.by_origin_packets[o] for o in origins)
    total_bytes = sum(capture.by_origin_bytes[o] for o in origins)
    counted = sum(f.packets + f.rpackets for f in flows)
    counted_bytes = sum(f.bytes + f.rbytes for f in flows)
    assert counted + counters.map_full_packets == total_packets
    assert counted_bytes + counters.map_full_bytes == total_bytes


def test_dns_ring_buffer_full_is_counted(small_node: Node) -> None:
    """A one-page ring buffer nobody reads: every DNS packet is captured or counted."""
    from flowscope.collector import abi
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import read_counters

    client, server = small_node.pods
    config = FlowProgramConfig(
        max_flows=1024, dns_port=53, dns_capture_len=512, dns_ringbuf_pages=1
    )
    with attached(small_node, config, [client.host_if]) as kernel:
        small_node.run(client, "udp-repeat", server.ip4, "53", "40")
        time.sleep(0.2)
        counters = read_counters(kernel.program.counters)
    slots = 4096 // (abi.DNS_EVENT_HEADER + 512 + 8)  # ring buffer records carry 8 header bytes
    assert counters.dns_captured + counters.dns_ringbuf_full == 40
    assert 0 < counters.dns_captured <= slots
