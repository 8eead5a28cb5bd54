"""An identity's JSON members are what orjson writes of its wire keys, byte for byte.

The compiled core renders them (``_flowcore.sided_json``) when every key and value is
plain text; anything else — escapes, non-ASCII, other types, the reserved keys — is left
to orjson. Either way the members must equal ``orjson.dumps(ident.source)[1:-1]``, and
the wire dicts, built on first use, must be the keys in their documented order.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flowscope.enricher import _flowcore, identities
from flowscope.enricher.identities import Identity, identity
from hypothesis import given
from hypothesis import strategies as st

# printable ASCII (what the core writes itself), with the characters JSON escapes and
# some beyond ASCII mixed in (what it leaves to orjson)
plain = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
value = st.one_of(plain, any_text, st.integers(-(2**63), 2**63 - 1), st.booleans())
key = st.one_of(plain, any_text, st.sampled_from(["address", "kind", "k8s.pod.name"]))


def orjson_members(address: str, kind: str, meta: dict[str, Any]) -> tuple[bytes, bytes]:
    """What the members were before the core rendered them: orjson of the wire dicts."""
    source = {"source.address": address, "source.kind": kind}
    destination = {"destination.address": address, "destination.kind": kind}
    for k, v in meta.items():
        source[f"source.{k}"] = v
        destination[f"destination.{k}"] = v
    return orjson.dumps(source)[1:-1], orjson.dumps(destination)[1:-1]


@given(plain, plain, st.dictionaries(plain, plain, max_size=8))
def test_plain_text_is_rendered_by_the_core_as_orjson_writes_it(
    address: str, kind: str, meta: dict[str, str]
) -> None:
    if "address" in meta or "kind" in meta:
        return  # covered below: left to orjson
    pair = _flowcore.sided_json(address, kind, meta)
    if any(c in s for s in (address, kind, *meta, *meta.values()) for c in '"\\'):
        assert pair is None
    else:
        assert pair == orjson_members(address, kind, meta)


@given(st.one_of(plain, any_text), plain, st.dictionaries(key, value, max_size=8))
def test_any_identity_has_orjsons_members_and_its_wire_keys(
    address: str, kind: str, meta: dict[str, Any]
) -> None:
    ident = Identity(kind, "ns", "node-1", address, meta, "uid")
    source, destination = orjson_members(address, kind, meta)
    assert (ident.source_json, ident.destination_json) == (source, destination)
    assert orjson.dumps(ident.source) == b"{" + source + b"}"
    assert orjson.dumps(ident.destination) == b"{" + destination + b"}"
    assert list(ident.source)[:2] == ["source.address", "source.kind"]


def test_what_the_core_leaves_to_orjson() -> None:
    meta = {"k8s.pod.name": "web-0"}
    assert _flowcore.sided_json("10.0.0.1", "pod", meta) is not None
    for address, kind, odd in [
        ("10.0.0.1", "pod", {"address": "x"}),  # would replace source.address's value
        ("10.0.0.1", "pod", {"kind": "x"}),
        ("10.0.0.1", "pod", {"k8s.pod.name": 7}),  # not a str
        ("10.0.0.1", "pod", {"k8s.pod.name": "wéb"}),  # not ASCII
        ("10.0.0.1", "pod", {"k8s.pod.name": "a\tb"}),  # escaped
        ("10.0.0.1", "pod", {'k8s.pod.labels.a"b': "x"}),
        ("10.0.0.1", "pod", {f"k8s.pod.labels.l{i}": "x" for i in range(70)}),  # > 64 keys
        ("10.0.0.1", "pod", {"k8s.pod.name": type("Name", (str,), {})("web-0")}),
    ]:
        assert _flowcore.sided_json(address, kind, odd) is None
        ident = Identity(kind, "ns", "", address, odd)
        assert (ident.source_json, ident.destination_json) == orjson_members(address, kind, odd)
    with pytest.raises(TypeError):
        _flowcore.sided_json("10.0.0.1", "pod", [("k8s.pod.name", "x")])
    with pytest.raises(TypeError):
        _flowcore.sided_json("10.0.0.1", "pod")


def test_a_lone_surrogate_fails_as_orjson_fails() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        Identity("pod", "ns", "", "10.0.0.1", {"k8s.pod.name": "\ud800"})


def test_identities_compare_by_their_keys_and_share_tokens() -> None:
    a = identity("pod", "team.a", "node-1", "10.0.0.1", {"k8s.pod.name": "web-0"})
    b = identity("pod", "team.a", "node-1", "10.0.0.1", {"k8s.pod.name": "web-0"})
    c = identity("pod", "team.a", "node-1", "10.0.0.2", {"k8s.pod.name": "web-0"})
    assert a == b and a != c
    assert a.token == "team_a" and a.token is b.token  # subjects.token, once per name
    assert a.source is a.source  # built once
    assert a.destination == {
        "destination.address": "10.0.0.1", "destination.kind": "pod",
        "destination.k8s.pod.name": "web-0",
    }  # fmt: skip


def test_the_token_cache_is_bounded() -> None:
    identities._TOKENS.clear()
    for i in range(identities.MAX_TOKENS + 5):
        identities._TOKENS[f"n{i}"] = f"n{i}"  # filled as identity() fills it
    ident = identity("pod", "ns.x", "", "10.0.0.1", {})
    assert ident.token == "ns_x"
    assert len(identities._TOKENS) == 1
