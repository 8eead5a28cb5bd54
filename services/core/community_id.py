"""Community ID v1 (https://github.com/corelight/community-id-spec), seed 0 by default.

A flow's 5-tuple is hashed direction-free: the endpoints are ordered so the smaller
(address, port) comes first, so both directions of a connection share one ID. ICMP and
ICMPv6 use the message type as the source "port" and the counterpart type (or, for
one-way messages, the code) as the destination "port", following Zeek.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import ipaddress
import struct

from flowscope.core.records import ICMP, ICMP_COUNTERPART, ICMPV6, SCTP, TCP, UDP

_PORTED = frozenset({TCP, UDP, SCTP})

# The hashed input, by address length and with or without ports: seed, source, destination,
# protocol, a zero byte[, source port, destination port] (network order). One precompiled
# pack per ID instead of three packs and three concatenations.
_INPUT = {
    (4, True): struct.Struct("!H4s4sBxHH"), (4, False): struct.Struct("!H4s4sBx"),
    (16, True): struct.Struct("!H16s16sBxHH"), (16, False): struct.Struct("!H16s16sBx"),
}  # fmt: skip


def _icmp_ports(proto: int, icmp_type: int, icmp_code: int) -> tuple[int, int, bool]:
    """(sport, dport, one_way) for an ICMP message of this type and code."""
    counterpart = ICMP_COUNTERPART[proto].get(icmp_type)
    if counterpart is None:
        return icmp_type, icmp_code, True
    return icmp_type, counterpart, False


@functools.lru_cache(maxsize=1 << 16)
def _packed(address: str) -> bytes:
    """An address's network-order bytes; cached, as the same addresses recur in every
    interval and parsing dominates the hash's cost."""
    return ipaddress.ip_address(address).packed


def community_id(
    proto: int, saddr: str, daddr: str, sport: int = 0, dport: int = 0, seed: int = 0
) -> str:
    """Community ID v1 of a flow.

    For ICMP/ICMPv6 pass the message type as ``sport`` and the code as ``dport``.
    Protocols other than TCP, UDP, SCTP, ICMP and ICMPv6 hash addresses only.
    """
    return community_id_packed(proto, _packed(saddr), _packed(daddr), sport, dport, seed)


def community_id_packed(
    proto: int, src: bytes, dst: bytes, sport: int = 0, dport: int = 0, seed: int = 0
) -> str:
    """:func:`community_id` of addresses already in network order (4 or 16 bytes each):
    for a caller that keeps them with its own per-address state (the enricher's
    canonical-address cache), sparing the two probes of the packing cache."""
    one_way = False
    if proto in (ICMP, ICMPV6):
        sport, dport, one_way = _icmp_ports(proto, sport, dport)
        has_ports = True
    else:
        has_ports = proto in _PORTED
    if not one_way and (dst < src or (dst == src and dport < sport)):
        src, dst, sport, dport = dst, src, dport, sport
    if has_ports:
        data = _INPUT[len(src), True].pack(seed, src, dst, proto, sport, dport)
    else:
        data = _INPUT[len(src), False].pack(seed, src, dst, proto)
    digest = hashlib.sha1(data).digest()
    return "1:" + binascii.b2a_base64(digest, newline=False).decode("ascii")
