"""IP tunnels' super-packets (IP-in-IP, IPv6-in-IPv4, GRE, gretap) count the inner headers
every wire segment carries.

GRO merges a TCP flow's segments inside an IP tunnel as it does inside VXLAN (Calico's
IPIP mode on a receiving node): the super-packet is outer IP + (GRE) + inner IP + TCP
once, then the payload of all its segments. Counting the outer IP header alone per
segment lost the tunnel's, the inner IP's and the TCP header's bytes of every segment
but the first.

The wire frames are sent from a pod's eth0 (AF_PACKET, TSO off so that veth hands them
to its peer's NAPI); the host veth has GRO on and holds them (gro_flush_timeout), so
its TC ingress sees one super-packet per tunnel. Ground truth: the frames themselves.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.privileged.collector.node import Node, netns
from tests.privileged.collector.programs import attached

ETHERNET = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
INNER_ETHERNET = b"\x02\x00\x00\x00\x00\x03\x02\x00\x00\x00\x00\x04\x08\x00"
OUTER_SRC, OUTER_DST = "10.99.0.2", "10.99.0.1"
SEGMENTS, PAYLOAD = 6, 1000


def _checksum(data: bytes) -> int:
    data += b"\x00" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    """With DF, an incrementing id and a valid checksum: what GRO merges."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000,
                                   64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)))  # fmt: skip
    header[10:12] = struct.pack("!H", _checksum(bytes(header)))
    return bytes(header) + payload


def _tcp(family: int, src: str, dst: str, seq: int) -> bytes:
    """An ACK segment with a valid checksum (GRO validates it: CHECKSUM_NONE)."""
    segment = bytearray(struct.pack("!HHIIBBHHH", 41000, 8080, seq, 1, 5 << 4, 0x10, 65535, 0, 0))
    segment += b"t" * PAYLOAD
    pseudo = socket.inet_pton(family, src) + socket.inet_pton(family, dst)
    segment[16:18] = struct.pack(
        "!H", _checksum(pseudo + struct.pack("!HH", 6, len(segment)) + segment)
    )
    return bytes(segment)


def wire_frames(kind: str) -> tuple[int, list[bytes]]:
    """(outer protocol, the IP packets of one TCP flow's segments inside tunnel ``kind``)."""
    packets = []
    for i in range(SEGMENTS):
        seq = 1 + PAYLOAD * i
        if kind == "sit":
            src, dst = "fd00:99::2", "fd00:99::1"
            tcp = _tcp(socket.AF_INET6, src, dst, seq)
            inner = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
                                socket.inet_pton(socket.AF_INET6, src),
                                socket.inet_pton(socket.AF_INET6, dst)) + tcp  # fmt: skip
        else:
            inner = _ipv4("10.99.2.2", "10.99.2.1", 6,
                          _tcp(socket.AF_INET, "10.99.2.2", "10.99.2.1", seq), 100 + i)  # fmt: skip
        proto = {"ipip": 4, "sit": 41}.get(kind, 47)
        if kind == "gre-key":  # K flag: a 4-byte key after the base header
            inner = struct.pack("!HHI", 0x2000, 0x0800, 42) + inner
        elif kind == "gretap":  # transparent Ethernet bridging: an Ethernet frame inside
            inner = struct.pack("!HH", 0, 0x6558) + INNER_ETHERNET + inner
        elif kind == "gre":
            inner = struct.pack("!HH", 0, 0x0800) + inner
        packets.append(_ipv4(OUTER_SRC, OUTER_DST, proto, inner, 500 + i))
    return proto, packets


SIOCETHTOOL, ETHTOOL_STSO, ETHTOOL_SGRO = 0x8946, 0x1F, 0x2C


def set_offload(ns: str, ifname: str, command: int, on: bool) -> None:
    """``ethtool -K`` without the tool: the legacy SIOCETHTOOL set-one-feature request."""
    value = struct.pack("II", command, int(on))
    data = ctypes.create_string_buffer(value)
    with netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(data))
        fcntl.ioctl(sock, SIOCETHTOOL, ifreq)
    finally:
        sock.close()


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"iptun{os.getpid()}", ipv6=False, gso=True).built(pods=1) as built:
        (pod,) = built.pods
        set_offload(built.host, pod.host_if, ETHTOOL_SGRO, True)  # veth: GRO (NAPI) is off
        for name, value in (("gro_flush_timeout", 200_000_000), ("napi_defer_hard_irqs", 10)):
            built.hx("sh", "-c", f"echo {value} > /sys/class/net/{pod.host_if}/{name}")
        # veth hands a TSO-capable sender's packets past its peer's GRO
        set_offload(pod.ns, "eth0", ETHTOOL_STSO, False)
        yield built


@pytest.mark.parametrize("kind", ["ipip", "sit", "gre", "gre-key", "gretap"])
def test_ip_tunnel_super_packets_count_every_segments_headers(node: Node, kind: str) -> None:
    from flowscope.collector.loading import FlowProgramConfig

    (pod,) = node.pods
    proto, packets = wire_frames(kind)
    with attached(node, FlowProgramConfig(max_flows=1024), [pod.host_if]) as kernel:
        with node.inside():
            kernel.drainer.drain()
            capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        capture.bind((pod.host_if, 0))
        capture.settimeout(0.5)
        node.run(pod, "inject", "eth0", *((ETHERNET + p).hex() for p in packets))
        time.sleep(0.3)
        seen = []
        try:
            while True:
                seen.append(len(capture.recv(65536)))
        except TimeoutError:
            pass
        capture.close()
        with node.inside():
            flows = kernel.drainer.drain().flows
    assert len(seen) < SEGMENTS, f"GRO merged nothing: {seen}"
    found = [(f.packets, f.bytes) for f in flows if f.proto == proto and f.src == OUTER_SRC]
    assert found == [(SEGMENTS, sum(len(p) for p in packets))]
