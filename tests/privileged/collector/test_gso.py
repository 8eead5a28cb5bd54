"""TSO/GSO super-packets count as the wire segments they stand for.

Here the veths keep their default offloads, so TCP hands the host veth 64 kB
super-packets. Ground truth: an AF_PACKET capture with PACKET_VNET_HDR, which reports each
frame's GSO segment size, so the test computes the segments and their bytes itself; and
the sender's TCP OutSegs counter, which counts GSO segments one by one.

Super-packets built from a virtio-net header (a tap, a virtio-net NIC, AF_PACKET with
PACKET_VNET_HDR) carry no segment count yet, only the segment size: the test writes them
into a tap, and sends them out of it, with the segments and bytes known by construction.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from tests.privileged.collector.node import Capture, Node, finish, wait_listening
from tests.privileged.collector.programs import attached
from tests.unit.collector import packet_building as pb


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


TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0002, 0x1000, 0x4000
VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4 = 1, 1, 5
SOL_PACKET, PACKET_VNET_HDR = 263, 15
ETHERNET = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"


@pytest.fixture
def tap_node() -> Iterator[Node]:
    with Node(tag=f"fx29g{os.getpid()}", ipv6=False).built(pods=0) as built:
        yield built


def vnet_super_packet(
    sport: int, payload: int, gso_type: int, options: bytes = b""
) -> tuple[bytes, int, int]:
    """struct virtio_net_hdr + frame of one super-packet of ``payload`` bytes in 1000-byte
    segments (gso_segs stays 0: SKB_GSO_DODGY); with its wire packets and IP bytes."""
    if gso_type == GSO_UDP_L4:
        l4, csum_offset = pb.udp(sport, 8080, b"u" * payload), 6
    else:
        l4, csum_offset = pb.tcp(sport, 8080, b"t" * payload), 16
    ip = pb.ipv4("10.99.0.2", "10.99.0.1", 17 if gso_type == GSO_UDP_L4 else 6, l4, options)
    l3 = 20 + len(options)
    headers = l3 + (8 if gso_type == GSO_UDP_L4 else 20)
    segments = -(-payload // 1000)
    vnet = struct.pack(
        "<BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, 14 + headers, 1000, 14 + l3, csum_offset
    )
    return vnet + ETHERNET + ip, segments, len(ip) + (segments - 1) * headers


def through_a_tap(
    node: Node, super_packet: Callable[[int], tuple[bytes, int, int]], sports: list[int]
) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Each ``super_packet(sport)`` (virtio_net_hdr + frame, wire packets, IP bytes)
    written into a tap (TC ingress), and ``super_packet(sport + 100)`` sent out of it
    through AF_PACKET (TC egress); (what the program counted per source port, what the
    wire carries)."""
    from flowscope.collector.loading import FlowProgramConfig

    with node.inside():
        tap = os.open("/dev/net/tun", os.O_RDWR)
    try:
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH22x", b"tap0", flags))
        node.hx("ip", "link", "set", "tap0", "up")
        with attached(node, FlowProgramConfig(max_flows=1024), ["tap0"]) as kernel:
            with node.inside():
                sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sender.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sender.bind(("tap0", 0))
            expected = {}
            for sport in sports:
                packet, segments, size = super_packet(sport)
                os.write(tap, packet)  # received: TC ingress
                sender.send(super_packet(sport + 100)[0])  # sent by this host: TC egress
                expected[sport] = expected[sport + 100] = (segments, size)
            sender.close()
            time.sleep(0.2)
            flows = kernel.drainer.drain().flows
    finally:
        os.close(tap)
    return {f.sport: (f.packets, f.bytes) for f in flows if f.sport in expected}, expected


def test_super_packets_without_a_segment_count_count_wire_segments(tap_node: Node) -> None:
    """Received from a tap (TC ingress) and sent through AF_PACKET (TC egress): TCP, UDP
    GSO, and IPv4 options (the general parser)."""
    cases = {40000: (5000, GSO_TCPV4, b""), 40001: (3500, GSO_UDP_L4, b""),
             40002: (2500, GSO_TCPV4, b"\x01\x01\x01\x01")}  # fmt: skip

    def super_packet(sport: int) -> tuple[bytes, int, int]:
        return vnet_super_packet(sport, *cases[sport % 100 + 40000])

    counted, expected = through_a_tap(tap_node, super_packet, list(cases))
    assert counted == expected
