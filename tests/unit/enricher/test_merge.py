"""Cross-node merge: under any interleaving, one record per connection, never doubled.

Two collectors (node-1, node-2) each report the same connection, each oriented its own
way; both nodes' socket events arrive in any order relative to the reports; the reports
are handled by either of two replicas (shared work) while every replica learns every
socket event (state). Whatever happens, exactly one enriched record comes out and its
counters are one report's counters.
"""

from __future__ import annotations

import orjson
import pytest
from flowscope.core import codec
from flowscope.enricher.enriching import Enricher
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.enricher.test_enriching import A, B, enricher, flow, sock


@st.composite
def scenario(draw: st.DrawFn) -> dict:
    a_port = draw(st.integers(1024, 65535))
    b_port = draw(st.integers(1, 65535))
    a_initiates = draw(st.booleans())
    counters = draw(st.tuples(*[st.integers(0, 10**9)] * 4))
    flip = draw(st.tuples(st.booleans(), st.booleans()))  # each collector's orientation
    order = draw(st.permutations(["flow-1", "flow-2", "sock-1", "sock-2"]))
    replicas = draw(st.tuples(st.integers(0, 1), st.integers(0, 1)))
    return {"a_port": a_port, "b_port": b_port, "a_initiates": a_initiates,
            "counters": counters, "flip": flip, "order": order, "replicas": replicas}  # fmt: skip


def report(node: str, flipped: bool, s: dict) -> dict:
    """One node's report: A→B counters as (bytes, packets, rbytes, rpackets) A-side first."""
    ab_b, ab_p, ba_b, ba_p = s["counters"]
    if not flipped:
        return flow(node, A, B, s["a_port"], s["b_port"], bytes=ab_b, packets=ab_p,
                    rbytes=ba_b, rpackets=ba_p)  # fmt: skip
    return flow(node, B, A, s["b_port"], s["a_port"], bytes=ba_b, packets=ba_p,
                rbytes=ab_b, rpackets=ab_p)  # fmt: skip


@settings(deadline=None, max_examples=200)  # no timing: CI machines are shared
@given(scenario())
def test_no_interleaving_doubles_or_loses_counters(s: dict) -> None:
    replicas = [enricher(), enricher()]
    for r in replicas:  # steady state: both nodes have been sending raw events
        r.observers.saw("node-1")
        r.observers.saw("node-2")
    a_event, b_event = ("connect", "accept") if s["a_initiates"] else ("accept", "connect")
    events = {
        "flow-1": report("node-1", s["flip"][0], s),
        "flow-2": report("node-2", s["flip"][1], s),
        "sock-1": sock("node-1", a_event, A, s["a_port"], B, s["b_port"], 11, "ca"),
        "sock-2": sock("node-2", b_event, B, s["b_port"], A, s["a_port"], 22, "cb"),
    }
    out = []
    for name in s["order"]:
        if name.startswith("sock"):
            for r in replicas:
                r.learn_sockets([dict(events[name])])
        else:
            replica = replicas[s["replicas"][int(name[-1]) - 1]]
            result = replica.flows([events[name]])
            out += [rec for recs in result.by_subject.values() for rec in recs]
    assert len(out) == 1
    (rec,) = out
    ab_b, ab_p, ba_b, ba_p = s["counters"]
    if rec["source.address"] == A:
        got = (rec["flow.bytes.delta"], rec["flow.packets.delta"],
               rec["flow.reverse.bytes.delta"], rec["flow.reverse.packets.delta"])  # fmt: skip
    else:
        got = (rec["flow.reverse.bytes.delta"], rec["flow.reverse.packets.delta"],
               rec["flow.bytes.delta"], rec["flow.packets.delta"])  # fmt: skip
    assert got == (ab_b, ab_p, ba_b, ba_p)
    kept = f"flow-{rec['observer.node.name'][-1]}"
    if s["order"].index(kept) > max(s["order"].index("sock-1"), s["order"].index("sock-2")):
        # every socket event was in before the kept report: both processes, true direction
        initiator = A if s["a_initiates"] else B
        assert rec["flow.direction"] == "forward" and rec["source.address"] == initiator
        pids = {rec["source.process.pid"], rec["destination.process.pid"]}
        assert pids == {11, 22}


# ---------------------------------------------------------------- one home, one node

OUT, OUT2 = "203.0.113.9", "198.51.100.7"  # outside the cluster: no home
AGENT = "192.168.0.1"  # node-1's address (and its hostNetwork agent's): home node-1
VIP = "10.96.0.30"  # a Service address: no home
# end → (the node it lives on, the node its socket events come from, its container)
ENDS = {A: ("node-1", "ca"), B: ("node-2", "cb"), AGENT: ("node-1", "cagent")}
# (end a, end b): each connection is reported by node-1 and node-2
CASES = {
    "two homes": (A, B),  # pod on node-1 ↔ pod on node-2: both nodes see it
    "one home": (A, OUT),  # pod → outside, counted again by node-2 (an egress gateway)
    "node address": (AGENT, OUT),  # node-1's own process ↔ outside, routed through node-2
    "one node": (A, AGENT),  # both ends on node-1, the report of node-2 routed through it
}


def replica(native: bool) -> Enricher:
    e = enricher(native=native)
    assert e.native == native  # the compiled core is built (test_flowcore_build.py)
    e.observers.saw("node-1")  # steady state: both nodes have been sending raw events
    e.observers.saw("node-2")
    return e


def enrich(e: Enricher, raws: list[dict]) -> tuple[list[dict], int]:
    """(records, dedup_dropped) of one raw flow message, as the pipeline hands it over:
    the compiled core reads the body itself, the Python path what codec.decode makes."""
    message = codec.encode(codec.RAW_FLOW, raws)
    out = e.flow_batch(message.headers, message.body)
    assert not out.bad
    recs = [orjson.loads(line) for lines in out.lines.values() for line in lines]
    return recs, out.tally.dedup_dropped


def counters_of(rec: dict, a: str) -> tuple[int, int, int, int]:
    """The record's counters, end a's side first."""
    fwd = (rec["flow.bytes.delta"], rec["flow.packets.delta"])
    rev = (rec["flow.reverse.bytes.delta"], rec["flow.reverse.packets.delta"])
    return fwd + rev if rec["source.address"] == a else rev + fwd


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("case", list(CASES))
@settings(deadline=None, max_examples=100)  # no timing: CI machines are shared
@given(s=scenario())
def test_every_case_and_interleaving_keeps_one_report_in_both_cores(
    case: str, native: bool, s: dict
) -> None:
    """As above for each case, in both cores: one record, one report's counters; with
    one home known, or both ends on one node, the home's report is the one kept."""
    a, b = CASES[case]
    a_port, b_port = s["a_port"], s["b_port"]
    if a == b and a_port == b_port:
        return
    ab_b, ab_p, ba_b, ba_p = s["counters"]

    def report(node: str, flipped: bool) -> dict:
        if not flipped:
            return flow(node, a, b, a_port, b_port, bytes=ab_b, packets=ab_p, rbytes=ba_b,
                        rpackets=ba_p)  # fmt: skip
        return flow(node, b, a, b_port, a_port, bytes=ba_b, packets=ba_p, rbytes=ab_b,
                    rpackets=ab_p)  # fmt: skip

    a_event, b_event = ("connect", "accept") if s["a_initiates"] else ("accept", "connect")
    a_node, a_cid = ENDS[a]
    pids = {11}
    if b in ENDS:
        b_node, b_cid = ENDS[b]
        b_sock = sock(b_node, b_event, b, b_port, a, a_port, 22, b_cid)
        pids.add(22)
    else:  # the outside end has no socket: node-2 reports another connection's event
        b_sock = sock("node-2", "connect", "10.9.9.9", 1, "10.9.9.8", 2, 33)
    events = {
        "flow-1": report("node-1", s["flip"][0]),
        "flow-2": report("node-2", s["flip"][1]),
        "sock-1": sock(a_node, a_event, a, a_port, b, b_port, 11, a_cid),
        "sock-2": b_sock,
    }
    replicas = [replica(native), replica(native)]
    out, dropped = [], 0
    for name in s["order"]:
        if name.startswith("sock"):
            for r in replicas:
                r.learn_sockets([dict(events[name])])
        else:
            recs, n = enrich(replicas[s["replicas"][int(name[-1]) - 1]], [events[name]])
            out += recs
            dropped += n
    assert len(out) == 1 and dropped == 1
    (rec,) = out
    assert counters_of(rec, a) == (ab_b, ab_p, ba_b, ba_p)
    if case != "two homes":
        assert rec["observer.node.name"] == "node-1"  # the home sees every packet
    kept = f"flow-{rec['observer.node.name'][-1]}"
    if s["order"].index(kept) > max(s["order"].index("sock-1"), s["order"].index("sock-2")):
        initiator = a if s["a_initiates"] else b
        assert rec["flow.direction"] == "forward" and rec["source.address"] == initiator
        assert {rec.get("source.process.pid"), rec.get("destination.process.pid")} - {None} == pids


@pytest.mark.parametrize("native", [False, True])
def test_reports_are_kept_while_no_known_home_runs_a_collector(native: bool) -> None:
    """A report is dropped only for a report its owner sends: with no home known, or
    the home's node silent (no collector there, or none within the ttl), every node's
    report is kept — duplicated, never lost."""
    e = enricher(native=native)
    e.observers.saw("node-2")  # node-1 never sent anything
    silent_home = [
        flow("node-2", A, OUT, 40000, 443),  # pod a's node has no collector
        flow("node-2", OUT2, AGENT, 40001, 22),  # node-1's address: the same
        flow("node-2", A, AGENT, 40002, 80),  # both ends on node-1
    ]
    recs, dropped = enrich(e, silent_home)
    assert len(recs) == len(silent_home) and dropped == 0
    no_home = [
        flow("node-1", OUT, OUT2, 40003, 443),  # each node's own report: both kept
        flow("node-2", OUT, OUT2, 40003, 443),
        flow("node-2", VIP, OUT, 40004, 80),  # a Service has no home
    ]
    recs, dropped = enrich(e, no_home)
    assert len(recs) == len(no_home) and dropped == 0
    # node-1 is active now (its report above): a report 301 s later finds it silent
    later = {"start_ns": 301 * 10**9, "end_ns": 301 * 10**9 + 1}
    recs, dropped = enrich(e, [flow("node-2", A, OUT, 40005, 443, **later)])
    assert len(recs) == 1 and dropped == 0


@pytest.mark.parametrize("native", [False, True])
def test_a_dnat_report_of_the_clients_node_is_kept(native: bool) -> None:
    """Pod a (node-1) dials a Service whose backend has no home here (outside, or a pod
    not listed yet): node-1, a's node, DNAT'ed it and reports it with ``nat_dst``; a
    second node on the way reports the backend 5-tuple. The client's node's report,
    which names the Service, is the one kept; were a's node silent, both would be."""
    e = replica(native)
    client_node = flow("node-1", A, OUT, 40000, 443, initiator=True, nat_dst=VIP, nat_dport=80)
    on_the_way = flow("node-2", A, OUT, 40000, 443, initiator=True)
    for first, second in ((client_node, on_the_way), (on_the_way, client_node)):
        recs, dropped = enrich(e, [first, second])
        assert dropped == 1 and [r["observer.node.name"] for r in recs] == ["node-1"]
    outside = flow("node-2", OUT2, B, 40001, 8080, nat_dst=VIP, nat_dport=80)  # B's node
    recs, dropped = enrich(e, [outside])
    assert len(recs) == 1 and dropped == 0
