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


@pytest.fixture
def gso_node() -> Iterator[Node]:
    built = Node(tag=f"cfg{os.getpid()}", ipv6=False, gso=True).create(pods=2)
    try:
        yield built
    finally:
        built.destroy()


def test_super_packets_count_wire_segments(gso_node: Node) -> None:
    from flowscope.collector.attaching import Attacher
    from flowscope.collector.draining import BatchReader, DirectionMemory, Drainer, TickClock
    from flowscope.collector.loading import FlowProgramConfig, load_flow_program

    client, server = gso_node.pods
    with gso_node.inside():
        program = load_flow_program(FlowProgramConfig(max_flows=1024))
        attacher = Attacher(program.ingress_fd, program.egress_fd)
        try:
            for pod in gso_node.pods:
                (index,) = attacher.ipr.link_lookup(ifname=pod.host_if)
                attacher.attach(index, pod.host_if)
            capture = Capture(client.host_if, vnet=True)
            _, client_out0 = gso_node.tcp_segments(client)
            srv = gso_node.start(server, "tcp-server", server.ip4, "8080", "300000")
            wait_listening(srv)
            gso_node.run(client, "tcp-client", server.ip4, "8080", "1000000")
            finish(srv)
            time.sleep(0.2)
            _, client_out1 = gso_node.tcp_segments(client)
            capture.stop()
            flows = (
                Drainer(
                    BatchReader(program.flows.map_fd),
                    TickClock(program.clock_pair),
                    "n",
                    3.0,
                    DirectionMemory(16),
                )
                .drain()
                .flows
            )
        finally:
            attacher.detach_all()
            attacher.close()
            program.close()
    (flow,) = [f for f in flows if f.proto == 6]
    fid = (6, flow.src, flow.dst, flow.sport, flow.dport)
    rid = (6, flow.dst, flow.src, flow.dport, flow.sport)
    assert capture.packets[fid] < flow.packets, "no super-packets: GSO was not exercised"
    assert (flow.packets, flow.bytes) == (capture.segments[fid], capture.wire_bytes[fid])
    assert (flow.rpackets, flow.rbytes) == (capture.segments[rid], capture.wire_bytes[rid])
    assert flow.packets == client_out1 - client_out0
