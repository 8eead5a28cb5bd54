"""Community ID v1 against the specification's published baseline (seed 0).

The vectors are corelight/community-id-spec `baseline/baseline_deflt.json`; for ICMP
and ICMPv6 the baseline's sport/dport are the message type and code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flowscope.core.community_id import community_id

VECTORS = json.loads((Path(__file__).parent / "community_id_vectors.json").read_text())


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v['proto']}-{v['saddr']}-{v['sport']}")
def test_baseline_vector(v: dict) -> None:
    got = community_id(v["proto"], v["saddr"], v["daddr"], v["sport"] or 0, v["dport"] or 0)
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
