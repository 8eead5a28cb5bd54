"""TSO/GSO super-packets count as the wire segments they stand for.

Here the veths keep their default offloads, so TCP hands the host veth 64 kB
super-packets. Ground truth: an AF_PACKET capture with PACKET_VNET_HDR, which reports each
frame's GSO segment size, so the test computes the segments and their bytes itself; and
the sender's TCP OutSegs counter, which counts GSO segments one by one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.privileged.collector.node import Capture, Node, finish, wait_listening
from tests.privileged.collector.programs import attached


@pytest.fixture
def gso_node() -> Iterator[Node]:
    with Node(tag=f"cfg{os.getpid()}", ipv6=False, gso=True).built() as built:
        yield built


def test_super_packets_count_wire_segments(gso_node: Node) -> None:
    from flowscope.collector.loading import FlowProgramConfig

    client, server = gso_node.pods
    ifnames = [pod.host_if for pod in gso_node.pods]
    with attached(gso_node, FlowProgramConfig(max_flows=1024), ifnames) as kernel:
        capture = Capture(client.host_if, vnet=True)
        _, client_out0 = gso_node.tcp_segments(client)
        srv = gso_node.start(server, "tcp-server", server.ip4, "8080", "300000")
        wait_listening(srv)
        gso_node.run(client, "tcp-client", server.ip4, "8080", "1000000")
        finish(srv)
        time.sleep(0.2)
        _, client_out1 = gso_node.tcp_segments(client)
        capture.stop()
        flows = kernel.drainer.drain().flows
    (flow,) = [f for f in flows if f.proto == 6]
    fid = (6, flow.src, flow.dst, flow.sport, flow.dport)
    rid = (6, flow.dst, flow.src, flow.dport, flow.sport)
    assert capture.packets[fid] < flow.packets, "no super-packets: GSO was not exercised"
    assert (flow.packets, flow.bytes) == (capture.segments[fid], capture.wire_bytes[fid])
    assert (flow.rpackets, flow.rbytes) == (capture.segments[rid], capture.wire_bytes[rid])
    assert flow.packets == client_out1 - client_out0
