"""Flow records rendered straight to NDJSON lines are the wire dicts, byte for byte.

The pipeline publishes :meth:`Enricher.flow_lines` (records joined from pre-rendered
JSON pieces); every other test reads :meth:`Enricher.flows` (wire dicts). These
properties tie the two together: any record, any state, the same bytes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import orjson
from flowscope.core import records
from flowscope.core.community_id import community_id as community_id_of
from flowscope.core.records import END_REASONS
from flowscope.enricher import identities, objects
from flowscope.enricher.enriching import Enricher, address_parts, render_line, render_wire
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.processes import SocketOwner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import A, B, enricher, flow, sock

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # any valid UTF-8
u64 = st.integers(0, 2**64 - 1)
community_id = st.from_regex(r"1:[A-Za-z0-9+/]{27}=", fullmatch=True)  # base64: no escapes
meta = st.dictionaries(
    st.sampled_from(["k8s.pod.name", "k8s.namespace.name", "k8s.pod.uid", "k8s.service.name",
                     "k8s.pod.labels.app", "k8s.pod.labels.a\"b\\c", "k8s.node.name"]),
    text, max_size=5,
)  # fmt: skip
identity = st.builds(
    identities.identity, st.sampled_from(["pod", "service", "node", "host", "external"]),
    text, text, st.sampled_from(["10.1.0.5", "2001:db8::1", "0.0.0.0"]), meta,
)  # fmt: skip
owner = st.builds(
    SocketOwner, st.integers(0, 2**31), text, text, st.sampled_from(["connect", "accept", "udp"])
)
optional_owner = st.none() | owner


@settings(max_examples=500, deadline=None)
@given(
    st.tuples(
        community_id,
        u64,
        u64,
        text,
        text,
        text,
        st.integers(0, 255),
        u64,
        u64,
        u64,
        u64,
        u64,
        u64,
        text,
        st.integers(0, 255),
        identity,
        identity,
        optional_owner,
        optional_owner,
        st.none() | text,
        st.none() | text,
    )
)
def test_a_rendered_line_is_the_wire_dict(args: tuple[Any, ...]) -> None:
    line = render_line(*args)
    wire = render_wire(*args)
    assert line == orjson.dumps(wire) + b"\n"
    assert orjson.loads(line) == wire


ADDRESSES = [A, B, "192.168.0.1", "203.0.113.9", "10.9.9.9"]
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}


@st.composite
def raw_flow(draw: st.DrawFn) -> dict[str, Any]:
    src, dst = draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from(ADDRESSES))
    return flow(
        draw(st.sampled_from(["node-1", "node-2", "node-3"])), src, dst,
        draw(st.sampled_from([80, 40000, 53])), draw(st.sampled_from([80, 40000, 53])),
        proto=draw(st.sampled_from([6, 17, 1, 132])), tcp_flags=draw(st.integers(0, 255)),
        initiator=draw(st.booleans()), bytes=draw(u64), end_reason="idle_timeout",
    )  # fmt: skip


@st.composite
def socket_event(draw: st.DrawFn) -> dict[str, Any]:
    return sock(
        draw(st.sampled_from(["node-1", "node-2"])), draw(st.sampled_from(["connect", "accept"])),
        draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from([80, 40000, 53])),
        draw(st.sampled_from(ADDRESSES)), draw(st.sampled_from([80, 40000, 53])),
        draw(st.integers(0, 3)), draw(st.sampled_from(["", "ca", "cb", "cagent", "zz"])),
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    flows=st.lists(raw_flow(), max_size=8),
    sockets=st.lists(socket_event(), max_size=6),
    names=st.lists(st.tuples(st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES), text),
                   max_size=4),
)  # fmt: skip
def test_the_pipeline_publishes_exactly_the_records_of_the_dict_path(
    flows: list[dict[str, Any]], sockets: list[dict[str, Any]], names: list[tuple[str, str, str]]
) -> None:
    replicas = [enricher(), enricher()]
    for e in replicas:
        e.learn_sockets([dict(s) for s in sockets])
        for client, address, name in names:
            e.names.learn(client, name or "x", [{"type": "A", "ttl": 60, "data": address}])
    wires = replicas[0].flows([dict(f) for f in flows])
    lines = replicas[1].flow_lines([dict(f) for f in flows])
    assert list(lines.lines) == list(wires.by_subject)
    for subject, recs in wires.by_subject.items():
        assert lines.lines[subject] == [orjson.dumps(r) + b"\n" for r in recs]
        for line in lines.lines[subject]:
            records.validate_flow(orjson.loads(line))
    assert lines.tally == wires.tally
    assert not lines.by_subject and not wires.lines


CHANGES = ("none", "pod", "close", "time")  # what happens between two intervals


def _change(e: Enricher, clock: Clock, change: str, sockets: list[dict[str, Any]]) -> None:
    """One change of the join state between intervals, applied alike to every replica."""
    inventory = e.resolver
    assert isinstance(inventory, Inventory)
    if change == "pod":  # pod a replaced at the same address, on the other node
        raw = cluster.pod("a", ips=(A,), node="node-2", uid="uid-a2", container_ids={"ca": "main"})
        inventory.upsert("pods", objects.pod_from_json(raw, ()))
    elif change == "close":  # every socket seen so far closes, and is forgotten
        e.learn_sockets([{**s, "event": "close"} for s in sockets])
        clock.now += 31
        e.sockets.expire()
    elif change == "time":  # past every DNS TTL, observer lifetime and deleted grace
        clock.now += 4000
        inventory.sweep()


@settings(max_examples=300, deadline=None)
@given(
    passes=st.lists(
        st.tuples(st.lists(raw_flow(), max_size=6), st.lists(socket_event(), max_size=3),
                  st.lists(st.sampled_from(END_REASONS), min_size=6, max_size=6),
                  st.lists(st.tuples(st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES)),
                           max_size=2),
                  st.sampled_from(CHANGES)),
        min_size=1, max_size=5,
    ),
    bound=st.sampled_from([1, 2, 65_536]),
)  # fmt: skip
def test_community_ids_remembered_per_flow_are_the_ones_computed(
    passes: list[tuple[Any, ...]], bound: int
) -> None:
    """The Community ID cache (per oriented 5-tuple, dropped at a flow's final report,
    cleared when full) changes no byte against no cache at all: the same flows reported
    over several intervals while pods are replaced, sockets open and close (re-orienting
    flows), DNS names are learned and expire, and observers go quiet."""
    clocks = [Clock(), Clock()]
    cached, uncached = enricher(clocks[0], cid_cache=bound), enricher(clocks[1], cid_cache=0)
    seen: list[dict[str, Any]] = []
    for flows, sockets, reasons, names, change in passes:
        flows = [{**f, "end_reason": r} for f, r in zip(flows, reasons, strict=False)]
        seen += sockets
        for e in (cached, uncached):
            e.learn_sockets([dict(s) for s in sockets])
            for client, address in names:
                e.names.learn(client, "n.example", [{"type": "A", "ttl": 60, "data": address}])
        got = cached.flow_lines([dict(f) for f in flows])
        want = uncached.flow_lines([dict(f) for f in flows])
        assert got.lines == want.lines and got.tally == want.tally
        for subject_lines in got.lines.values():
            for line in subject_lines:
                rec = orjson.loads(line)
                if rec["network.transport"] in PROTOS:
                    assert rec["flow.community_id"] == community_id_of(
                        PROTOS[rec["network.transport"]], rec["source.address"],
                        rec["destination.address"], rec["source.port"], rec["destination.port"],
                    )  # fmt: skip
        for e, clock in zip((cached, uncached), clocks, strict=True):
            _change(e, clock, change, seen)


def _ipaddress_parts(text: str) -> tuple[str, str, bytes] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (str(ip), "ipv6" if ip.version == 6 else "ipv4", ip.packed)


octet = st.one_of(st.integers(0, 999).map(str), st.from_regex(r"0[0-9]{1,2}", fullmatch=True))
address_texts = st.one_of(
    st.lists(octet, min_size=1, max_size=5).map(".".join),  # dotted, leading zeros, > 255
    st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(n >> s & 255) for s in (24, 16, 8, 0))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    st.text(st.sampled_from("0123456789.:abcdefx% \n\x00\u0661\u0664"), max_size=20),
    st.sampled_from(["::ffff:1.2.3.4", "1.2.3.4%eth0", "fe80::1%eth0", "0x1.2.3.4", " 1.2.3.4"]),
)


@settings(max_examples=500, deadline=None)
@given(text=address_texts)
def test_address_parts_read_an_address_as_ipaddress_does(text: str) -> None:
    """The dotted-quad fast path accepts nothing ipaddress rejects, and agrees with it."""
    try:
        got: tuple[str, str, bytes] | None = address_parts(text)
    except ValueError:
        got = None
    assert got == _ipaddress_parts(text)
