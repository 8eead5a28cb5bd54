"""Tunnel super-packets (VXLAN, Geneve) count the headers every wire segment carries.

A TCP super-packet sent over a VXLAN or Geneve device reaches the device below as one
encapsulated GSO skb: outer IP + UDP + tunnel header + inner Ethernet + inner IP + TCP
once, then the payload of all its segments. Each wire segment repeats all of those
headers, so the tunnel flow (node ↔ node UDP) must add them back per segment, the inner
ones included, not the outer IP + UDP alone.

Ground truth: the inner TCP flow, counted by the same program on the tunnel device (its
super-packets are plain TCP GSO, which test_gso.py checks against a capture), and the
encapsulation each inner packet gets on the wire: outer IPv4 (20) + UDP (8) + VXLAN or
Geneve without options (8) + inner Ethernet (14) = 50 bytes. So, per direction, the
tunnel's packets equal the inner flow's, and its bytes the inner flow's plus 50 a packet.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.privileged.collector.node import TRAFFIC, Node, finish, sh, wait_listening
from tests.privileged.collector.programs import attached
from tests.privileged.collector.test_gso import (
    ETHERNET,
    GSO_TCPV4,
    GSO_UDP_L4,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    through_a_tap,
)
from tests.unit.collector import packet_building as pb

ENCAPSULATION = 20 + 8 + 8 + 14
HOST_MAC, POD_MAC = "02:00:00:00:99:01", "02:00:00:00:99:02"
HOST_IP, POD_IP = "10.99.1.1", "10.99.1.2"


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"tg{os.getpid()}", ipv6=False, gso=True).built(pods=1) as built:
        yield built


def vxlan(node: Node, port: int) -> None:
    """A VXLAN device ``tun0`` at each end of the node's pod link, with static
    neighbours: no ARP inside the tunnel, so every encapsulated packet carries IP. Its
    MTU is the link's 1500 less the encapsulation: no outer packet is fragmented."""
    (pod,) = node.pods
    ends = [
        (node.host, pod.ip4, HOST_MAC, HOST_IP, POD_IP, POD_MAC),
        (pod.ns, "10.203.0.1", POD_MAC, POD_IP, HOST_IP, HOST_MAC),
    ]
    for ns, remote, mac, ip, peer_ip, peer_mac in ends:
        ipx = ("ip", "netns", "exec", ns, "ip")
        sh(*ipx, "link", "add", "tun0", "address", mac, "mtu", "1450", "type", "vxlan",
           "vni", "42", "remote", remote, "dstport", str(port), "nolearning")  # fmt: skip
        sh(*ipx, "addr", "add", f"{ip}/24", "dev", "tun0")
        sh(*ipx, "link", "set", "tun0", "up")
        sh(*ipx, "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", "tun0", "nud", "permanent")


@pytest.mark.parametrize("port", [4789, 8472])
def test_vxlan_super_packets_count_every_segments_headers(node: Node, port: int) -> None:
    from flowscope.collector.loading import FlowProgramConfig

    vxlan(node, port)
    (pod,) = node.pods
    with attached(node, FlowProgramConfig(max_flows=1024), [pod.host_if, "tun0"]) as kernel:
        server = subprocess.Popen(
            ["ip", "netns", "exec", node.host, sys.executable, TRAFFIC,
             "tcp-server", HOST_IP, "8080", "400000"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_listening(server)
        node.run(pod, "tcp-client", HOST_IP, "8080", "2000000")
        finish(server)
        time.sleep(0.2)
        flows = kernel.drainer.drain().flows
    (inner,) = [f for f in flows if f.proto == 6]
    outer = [f for f in flows if f.proto == 17 and port in (f.sport, f.dport)]
    assert outer, flows
    # per direction: pod → host is the inner flow's forward direction if the pod began it
    to_host = (
        (inner.packets, inner.bytes) if inner.src == POD_IP else (inner.rpackets, inner.rbytes)
    )
    to_pod = (inner.rpackets, inner.rbytes) if inner.src == POD_IP else (inner.packets, inner.bytes)
    sent = {"pod": [0, 0], "host": [0, 0]}
    for f in outer:
        for src, packets, size in ((f.src, f.packets, f.bytes), (f.dst, f.rpackets, f.rbytes)):
            side = sent["pod" if src == pod.ip4 else "host"]
            side[0] += packets
            side[1] += size
    assert to_host[0] > 100, "the transfer did not happen"
    assert sent["pod"] == [to_host[0], to_host[1] + ENCAPSULATION * to_host[0]]
    assert sent["host"] == [to_pod[0], to_pod[1] + ENCAPSULATION * to_pod[0]]


# Geneve devices need a kernel built with CONFIG_GENEVE, which this test machine's is not:
# these super-packets are written into a tap with a virtio-net header instead (as a VM's
# virtio-net NIC hands its TSO to the host), Geneve with options and VXLAN around inner
# IPv4 and IPv6 TCP, and around inner UDP GSO. Such a super-packet has no segment count
# yet (SKB_GSO_DODGY): the kernel splits the inner L4 payload in gso_size pieces, every
# piece behind a copy of all the headers before it (qdisc_pkt_len_init computes the same).
GSO_TCPV6 = 4  # virtio_net_hdr's gso_type
INNER_ETHERNET = b"\x02\x00\x00\x00\x00\x03\x02\x00\x00\x00\x00\x04"
GENEVE_OPTION = struct.pack("!HBB", 0x0102, 0x80, 1) + b"\x00\x00\x00\x07"  # 8 bytes


def tunnel_header(kind: str) -> bytes:
    if kind == "geneve":  # version 0, opt_len 2 (8 bytes), Ethernet, VNI 42
        return (
            struct.pack("!BBH", len(GENEVE_OPTION) // 4, 0, 0x6558)
            + b"\x00\x00\x2a\x00"
            + GENEVE_OPTION
        )
    return b"\x08\x00\x00\x00\x00\x00\x2a\x00"  # VXLAN: I flag, VNI 42


def tunnel_super_packet(
    kind: str, port: int, sport: int, inner: str, payload: int
) -> tuple[bytes, int, int]:
    """virtio_net_hdr + frame of one tunnel super-packet of ``payload`` inner L4 bytes in
    1000-byte segments; with its wire packets and IP bytes."""
    if inner == "udp":
        l4, gso_type, l4_len, csum_offset = pb.udp(5000, 6000, b"u" * payload), GSO_UDP_L4, 8, 6
    else:
        l4, gso_type, l4_len, csum_offset = pb.tcp(5000, 6000, b"t" * payload), GSO_TCPV4, 20, 16
    if inner == "tcp6":
        ip = pb.ipv6("fd00:99::2", "fd00:99::1", 6, l4)
        gso_type, ethertype = GSO_TCPV6, b"\x86\xdd"
    else:
        ip = pb.ipv4("10.99.2.2", "10.99.2.1", 17 if inner == "udp" else 6, l4)
        ethertype = b"\x08\x00"
    encapsulated = tunnel_header(kind) + INNER_ETHERNET + ethertype + ip
    outer = pb.ipv4("10.99.0.2", "10.99.0.1", 17, pb.udp(sport, port, encapsulated))
    headers = len(outer) - payload  # outer IP + UDP + tunnel + inner Ethernet, IP, L4
    segments = -(-payload // 1000)
    csum_start = 14 + headers - l4_len
    vnet = struct.pack(
        "<BBHHHH",
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        14 + headers,
        1000,
        csum_start,
        csum_offset,
    )
    return vnet + ETHERNET + outer, segments, len(outer) + (segments - 1) * headers


@pytest.fixture
def tap_node() -> Iterator[Node]:
    with Node(tag=f"tgt{os.getpid()}", ipv6=False).built(pods=0) as built:
        yield built


def test_tunnel_super_packets_without_a_segment_count(tap_node: Node) -> None:
    """Received from a tap (TC ingress) and sent through AF_PACKET (TC egress)."""
    cases = [("geneve", 6081, "tcp"), ("geneve", 6081, "tcp6"), ("vxlan", 4789, "tcp"),
             ("vxlan", 8472, "udp"), ("vxlan", 4789, "tcp6")]  # fmt: skip

    def super_packet(sport: int) -> tuple[bytes, int, int]:
        kind, port, inner = cases[sport % 100]
        return tunnel_super_packet(kind, port, sport, inner, 4500)

    counted, expected = through_a_tap(
        tap_node, super_packet, [41000 + n for n in range(len(cases))]
    )
    assert counted == expected
