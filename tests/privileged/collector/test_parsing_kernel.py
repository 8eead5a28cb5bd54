"""Header parsing in the kernel, with frames the stack would not build by itself.

Raw frames are sent from a pod's eth0 (AF_PACKET) and counted at the host veth's TC
ingress: 802.1Q and QinQ tags, IPv4 options, IPv6 extension headers, SCTP, fragments,
one-way ICMP, and garbage that must be ignored without harm.
"""

from __future__ import annotations

import socket
import struct
import time

from flowscope.core.records import RawFlow

from tests.privileged.collector.node import Node
from tests.privileged.collector.programs import Kernel

DST_MAC = bytes.fromhex("02aabbccddee")
SRC_MAC = bytes.fromhex("02aabbccdd01")


def eth(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = 0x88A8 if i == 0 and len(vlans) == 2 else 0x8100
        tags += struct.pack("!HH", tpid, vid)
    return DST_MAC + SRC_MAC + tags + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, l4: bytes, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(l4)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + options + l4


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload  # fmt: skip


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def flow_between(flows: list[RawFlow], src: str, dst: str) -> RawFlow:
    found = [f for f in flows if (f.src, f.dst) == (src, dst)]
    assert len(found) == 1, flows
    return found[0]


def send(node: Node, frames: list[bytes], kernel: Kernel) -> list[RawFlow]:
    pod = node.pods[0]
    with node.inside():
        kernel.drainer.drain()  # type: ignore[attr-defined]
        node.run(pod, "inject", "eth0", *(f.hex() for f in frames))
        time.sleep(0.1)
        return kernel.drainer.drain().flows  # type: ignore[attr-defined]


def test_vlan_tags_ipv4_options_sctp_fragments_icmp(node: Node, kernel: Kernel) -> None:
    single = ipv4("10.203.77.1", "10.203.77.2", 17, udp(1111, 2222, b"a" * 50))
    double = ipv4("10.203.77.3", "10.203.77.4", 17, udp(3333, 4444, b"b" * 20))
    options = ipv4(
        "10.203.77.5", "10.203.77.6", 17, udp(5555, 6666, b"c" * 10), options=b"\x01" * 8
    )
    sctp = ipv4(
        "10.203.77.7", "10.203.77.8", 132, struct.pack("!HHII", 38412, 36412, 0, 0) + b"d" * 16
    )
    later_fragment = ipv4("10.203.77.9", "10.203.77.10", 17, b"e" * 40, frag=185)
    unreachable = ipv4(
        "10.203.77.11", "10.203.77.12", 1, struct.pack("!BBHI", 3, 1, 0, 0) + b"f" * 28
    )
    # UDP-Lite: UDP's header layout, a checksum coverage where UDP has its length
    udplite = ipv4("10.203.77.13", "10.203.77.14", 136, struct.pack("!HHHH", 7000, 8000, 8, 0))
    frames = [
        eth(0x0800, single, (100,)),
        eth(0x0800, double, (100, 200)),
        eth(0x0800, options),
        eth(0x0800, options),
        eth(0x0800, sctp),
        eth(0x0800, later_fragment),
        eth(0x0800, unreachable),
        eth(0x0800, udplite),
    ]
    flows = send(node, frames, kernel)
    f = flow_between(flows, "10.203.77.1", "10.203.77.2")
    assert (f.proto, f.sport, f.dport, f.packets, f.bytes) == (17, 1111, 2222, 1, len(single))
    f = flow_between(flows, "10.203.77.3", "10.203.77.4")
    assert (f.sport, f.dport, f.packets, f.bytes) == (3333, 4444, 1, len(double))
    f = flow_between(flows, "10.203.77.5", "10.203.77.6")
    assert (f.sport, f.dport, f.packets, f.bytes) == (5555, 6666, 2, 2 * len(options))
    f = flow_between(flows, "10.203.77.7", "10.203.77.8")
    assert (f.proto, f.sport, f.dport, f.bytes) == (132, 38412, 36412, len(sctp))
    f = flow_between(flows, "10.203.77.9", "10.203.77.10")
    assert (f.proto, f.sport, f.dport, f.bytes) == (17, 0, 0, len(later_fragment))
    f = flow_between(flows, "10.203.77.11", "10.203.77.12")
    assert (f.proto, f.sport, f.dport) == (1, 3, 1)  # one-way ICMP: type and code
    f = flow_between(flows, "10.203.77.13", "10.203.77.14")
    assert (f.proto, f.sport, f.dport, f.bytes) == (136, 7000, 8000, len(udplite))


def test_ipv6_extension_headers_are_skipped(node: Node, kernel: Kernel) -> None:
    data = udp(7777, 8888, b"g" * 30)
    fragment = struct.pack("!BBHI", 17, 0, 0, 42)  # next UDP, offset 0: first fragment
    hop_by_hop = struct.pack("!BB", 44, 0) + b"\x01\x04\x00\x00\x00\x00"  # → fragment
    dest_opts = struct.pack("!BB", 0, 0) + b"\x01\x04\x00\x00\x00\x00"  # → hop-by-hop
    packet = ipv6("fd00:203:77::1", "fd00:203:77::2", 60, dest_opts + hop_by_hop + fragment + data)
    flows = send(node, [eth(0x86DD, packet, (300,))], kernel)
    f = flow_between(flows, "fd00:203:77::1", "fd00:203:77::2")
    assert (f.proto, f.sport, f.dport, f.packets, f.bytes) == (17, 7777, 8888, 1, len(packet))


def test_ipv6_non_first_fragment_is_payload_not_headers(node: Node, kernel: Kernel) -> None:
    """A datagram fragmented after a destination options header (RFC 8200 lets it sit in
    the fragmentable part): the first fragment has it and the UDP header; the second is
    payload from its fragment header on, whatever its bytes look like (here a first byte
    6, which read as a header would make the fragment a TCP flow with made-up ports)."""
    src, dst = "fd00:203:77::3", "fd00:203:77::4"
    dest_opts = struct.pack("!BB", 17, 0) + b"\x01\x04\x00\x00\x00\x00"  # → UDP
    first = struct.pack("!BBHI", 60, 0, 0x0001, 7) + dest_opts + udp(5000, 6000, b"A" * 8)
    second = struct.pack("!BBHI", 60, 0, 2 << 3, 7) + b"\x06\x00" + b"B" * 14
    frames = [eth(0x86DD, ipv6(src, dst, 44, first)), eth(0x86DD, ipv6(src, dst, 44, second))]
    flows = send(node, frames, kernel)
    found = sorted((f.proto, f.sport, f.dport, f.packets, f.bytes) for f in flows if f.src == src)
    # The second fragment's protocol is its fragment header's next header: the options
    # header, as the fragment cannot show the protocol behind it.
    assert found == [(17, 5000, 6000, 1, 40 + len(first)), (60, 0, 0, 1, 40 + len(second))]


def tcp(sport: int, dport: int, data: bytes, flags: int = 0x18) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 1000, 0, 0) + data


def test_common_case_path_and_general_parser_key_flows_alike(node: Node, kernel: Kernel) -> None:
    """Plain TCP/UDP packets take the program's common-case path; the same flows with a
    VLAN tag, IPv4 options or an IPv6 extension header take the general parser. Both
    must build the same key and direction: one entry per flow, both directions counted
    (each address order: source lower, source higher, equal so that the ports decide;
    IPv6 addresses differing in their first or their last 8 bytes)."""
    endpoints = [
        ("10.203.78.1", "10.203.78.2", 1000, 2000),
        ("10.203.78.4", "10.203.78.3", 1000, 2000),
        ("10.203.78.5", "10.203.78.5", 3000, 2000),
        ("fd00:203:78::1", "fd00:203:78::2", 1000, 2000),
        ("fd00:203:79::1", "fd00:203:78::9", 1000, 2000),
        ("fd00:203:78::7", "fd00:203:78::7", 3000, 2000),
    ]
    dest_opts = b"\x00\x01\x04\x00\x00\x00\x00"  # after the next-header byte: padding
    frames: list[bytes] = []
    expected = {}
    for a, b, pa, pb in endpoints:
        for proto, l4 in ((17, udp), (6, tcp)):
            if ":" in a:
                ethertype = 0x86DD
                plain_ab = ipv6(a, b, proto, l4(pa, pb, b"x" * 30))
                plain_ba = ipv6(b, a, proto, l4(pb, pa, b"y" * 20))
                tagged_ab = ipv6(a, b, proto, l4(pa, pb, b"z" * 10))
                general_ba = ipv6(b, a, 60, bytes([proto]) + dest_opts + l4(pb, pa, b"w" * 5))
            else:
                ethertype = 0x0800
                plain_ab = ipv4(a, b, proto, l4(pa, pb, b"x" * 30))
                plain_ba = ipv4(b, a, proto, l4(pb, pa, b"y" * 20))
                tagged_ab = ipv4(a, b, proto, l4(pa, pb, b"z" * 10))
                general_ba = ipv4(b, a, proto, l4(pb, pa, b"w" * 5), options=b"\x01" * 4)
            # First packet a → b: a is the forward source. Trailing bytes like Ethernet
            # padding after plain_ab: the IP length field counts, not the frame.
            frames += [
                eth(ethertype, plain_ab + b"\x00" * 6),
                eth(ethertype, general_ba),
                eth(ethertype, tagged_ab, (100,)),
                eth(ethertype, plain_ba),
            ]
            forward = len(plain_ab) + len(tagged_ab)
            expected[(proto, a, pa)] = (2, forward, 2, len(general_ba) + len(plain_ba))
    flows = send(node, frames, kernel)
    for (proto, a, pa), counts in expected.items():
        found = [
            f
            for f in flows
            if f.proto == proto and a in (f.src, f.dst) and pa in (f.sport, f.dport)
        ]
        assert len(found) == 1, found  # two would mean two keys for one flow
        f = found[0]
        assert (f.src, f.sport) == (a, pa)
        assert (f.packets, f.bytes, f.rpackets, f.rbytes) == counts


def test_garbage_frames_are_ignored_and_packets_still_pass(node: Node, kernel: Kernel) -> None:
    frames = [
        eth(0x0800, b"\x45\x00"),  # IPv4 header cut short
        eth(0x0800, b"\x41" + b"\x00" * 30),  # IHL 1: impossible
        eth(0x86DD, b"\x60" + b"\x00" * 10),  # IPv6 header cut short
        eth(0x0806, b"\x00" * 28),  # ARP-like: not IP
        eth(0x8100, b""),  # a VLAN tag with nothing behind it
        # EtherType and version nibble disagree (both parsers look at the nibble)
        eth(0x0800, b"\x65" + ipv4("10.203.77.20", "10.203.77.21", 17, udp(1, 2, b"h" * 9))[1:]),
        eth(0x86DD, b"\x40" + ipv6("fd00:203:77::20", "fd00:203:77::21", 17, udp(1, 2, b"i"))[1:]),
    ]
    flows = send(node, frames, kernel)
    # Nothing but the pods' own IPv6 link-local chatter (MLD, router solicitations).
    assert [f for f in flows if not f.dst.startswith("ff02:")] == []
    # The program neither crashed nor changed the packets' fate: traffic still flows.
    client, server = node.pods[:2]
    assert node.run(client, "ping", server.ip4, "1")["replies"] == 1


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def test_device_without_ethernet_header(node: Node, kernel: Kernel) -> None:
    """A tun device (like WireGuard): frames start at the IP header; both hooks count."""
    import fcntl

    node.hx("ip", "tuntap", "add", "dev", "tun0", "mode", "tun")
    node.hx("ip", "addr", "add", "10.203.99.1/24", "dev", "tun0")
    node.hx("ip", "link", "set", "tun0", "up")
    try:
        with node.inside():
            tun = open("/dev/net/tun", "r+b", buffering=0)  # noqa: SIM115 - closed below
            fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", b"tun0", 0x0001 | 0x1000))
            (index,) = kernel.attacher.ipr.link_lookup(ifname="tun0")  # type: ignore[attr-defined]
            assert kernel.attacher.attach(index, "tun0", ethernet=False)  # type: ignore[attr-defined]
            kernel.drainer.drain()  # type: ignore[attr-defined]
            packet = bytearray(ipv4("10.203.99.2", "10.203.99.1", 17, udp(4000, 5000, b"t" * 40)))
            packet[10:12] = struct.pack("!H", _ip_checksum(bytes(packet[:20])))
            for _ in range(3):
                tun.write(bytes(packet))  # received on tun0: TC ingress
            reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            reply.bind(("10.203.99.1", 5000))
            for _ in range(2):
                reply.sendto(b"r" * 10, ("10.203.99.2", 4000))  # sent via tun0: TC egress
            reply.close()
            time.sleep(0.1)
            flows = kernel.drainer.drain().flows  # type: ignore[attr-defined]
            tun.close()
    finally:
        node.hx("ip", "link", "del", "tun0")
    f = flow_between(flows, "10.203.99.2", "10.203.99.1")
    assert (f.proto, f.sport, f.dport) == (17, 4000, 5000)
    assert (f.packets, f.bytes, f.rpackets, f.rbytes) == (3, 3 * len(packet), 2, 2 * (28 + 10))
