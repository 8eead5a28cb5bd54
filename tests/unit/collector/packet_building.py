"""Build the bytes the kernel captures for DNS: IP header on, around a DNS message.

Headers are assembled by hand (with correct lengths) so the tests control every field
the parser reads; checksums are left zero because the parser does not check them.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct

import dnslib


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes, options: bytes = b"", seq: int = 1) -> bytes:
    """A TCP segment (PSH|ACK) with ``options`` padded to 4 bytes."""
    options += b"\x01" * (-len(options) % 4)
    offset = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, offset << 4, 0x18, 65535, 0, 0)
    return header + options + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, options: bytes = b"") -> bytes:
    options += b"\x00" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        total,
        0x1234,
        0x4000,  # DF, first (only) fragment
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + options + payload


def ipv6(
    src: str, dst: str, proto: int, payload: bytes, extensions: tuple[int, ...] | list[int] = ()
) -> bytes:
    """IPv6 with the given extension header kinds (0, 43, 60: 8 bytes; 44: first fragment)."""
    chain = [*extensions, proto]
    ext = b""
    for kind, next_kind in itertools.pairwise(chain):
        if kind == 44:
            ext += struct.pack("!BBHI", next_kind, 0, 0x0001, 0xABCD)  # offset 0, M set
        elif kind == 51:
            ext += struct.pack("!BBHII", next_kind, 4, 0, 1, 1) + b"\x00" * 12  # (4+2)*4 bytes
        else:
            ext += struct.pack("!BB", next_kind, 0) + b"\x01\x04\x00\x00\x00\x00"
    body = ext + payload
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        chain[0],
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + body


def _question(name: str, qtype: str, ident: int) -> dnslib.DNSRecord:
    """A query record with a fixed id (dnslib's ``question()`` would draw a random one)."""
    return dnslib.DNSRecord(
        dnslib.DNSHeader(id=ident, rd=1),
        q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)),
    )


def query(name: str, qtype: str = "A", ident: int = 4660) -> bytes:
    return bytes(_question(name, qtype, ident).pack())


def response(
    name: str, answers: list[tuple[str, str, int, str]], ident: int = 4660, qtype: str = "A",
    rcode: int = 0,
) -> bytes:  # fmt: skip
    """A response to ``name`` with (rname, type, ttl, data) answers."""
    r = _question(name, qtype, ident).reply()
    r.header.rcode = rcode
    for rname, rtype, ttl, data in answers:
        rdata = {
            "A": dnslib.A,
            "AAAA": dnslib.AAAA,
            "CNAME": dnslib.CNAME,
            "MX": dnslib.MX,
            "TXT": dnslib.TXT,
        }[rtype](data)
        r.add_answer(dnslib.RR(rname, getattr(dnslib.QTYPE, rtype), rdata=rdata, ttl=ttl))
    return bytes(r.pack())


def tcp_dns(message: bytes) -> bytes:
    """A DNS message with the 2-byte length prefix TCP uses."""
    return struct.pack("!H", len(message)) + message
