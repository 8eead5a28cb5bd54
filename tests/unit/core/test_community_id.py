"""Community ID v1 against the specification's published baseline (seed 0).

The vectors are corelight/community-id-spec `baseline/baseline_deflt.json`; for ICMP
and ICMPv6 the baseline's sport/dport are the message type and code.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import struct
from pathlib import Path

import pytest
from flowscope.core.community_id import community_id, community_id_packed
from flowscope.core.records import ICMP_COUNTERPART
from hypothesis import given, settings
from hypothesis import strategies as st

VECTORS = json.loads((Path(__file__).parent / "community_id_vectors.json").read_text())


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['proto']}-{v['saddr']}-{v['sport']}")
def test_baseline_vector(v: dict) -> None:
    got = community_id(v["proto"], v["saddr"], v["daddr"], v["sport"] or 0, v["dport"] or 0)
    assert got == v["communityid"]


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['proto']}-{v['saddr']}-{v['sport']}")
def test_packed_addresses_give_the_same_id(v: dict) -> None:
    """The entry point for addresses already in network order (the enricher's)."""
    src = ipaddress.ip_address(v["saddr"]).packed
    dst = ipaddress.ip_address(v["daddr"]).packed
    got = community_id_packed(v["proto"], src, dst, v["sport"] or 0, v["dport"] or 0)
    assert got == v["communityid"]


def test_both_directions_share_an_id() -> None:
    a = community_id(6, "10.0.0.1", "127.0.0.1", 1234, 80)
    b = community_id(6, "127.0.0.1", "10.0.0.1", 80, 1234)
    assert a == b


def test_one_way_icmp_is_not_reordered() -> None:
    # Destination unreachable (type 3) is one-way: swapping endpoints changes the ID.
    assert community_id(1, "10.0.0.2", "10.0.0.1", 3, 1) != community_id(
        1, "10.0.0.1", "10.0.0.2", 3, 1
    )


def _reference(proto: int, saddr: str, daddr: str, sport: int, dport: int, seed: int) -> str:
    """The specification written out plainly (the module's previous implementation)."""
    src, dst = ipaddress.ip_address(saddr).packed, ipaddress.ip_address(daddr).packed
    one_way = False
    if proto in (1, 58):
        pairs = ICMP_COUNTERPART[proto]
        if sport in pairs:
            dport = pairs[sport]
        else:
            one_way = True
    if not one_way and (dst, dport) < (src, sport):
        src, dst, sport, dport = dst, src, dport, sport
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", proto, 0)
    if proto in (1, 6, 17, 58, 132):
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([1, 6, 17, 47, 58, 132]),
    st.booleans(),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_matches_the_specification_written_out(
    proto: int, v6: bool, a: int, b: int, sport: int, dport: int, seed: int
) -> None:
    """Any protocol (with ports or without, ICMP types with and without a counterpart),
    either family, equal or ordered addresses, any seed."""
    hosts = ["fd00::1", "fd00::2", "fd00::1:0"] if v6 else ["10.0.0.1", "10.0.0.2", "9.255.0.1"]
    if proto in (1, 58):
        sport %= 256
        dport %= 256
    got = community_id(proto, hosts[a], hosts[b], sport, dport, seed)
    assert got == _reference(proto, hosts[a], hosts[b], sport, dport, seed)
