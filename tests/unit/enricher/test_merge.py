"""Cross-node merge: under any interleaving, one record per connection, never doubled.

Two collectors (node-1, node-2) each report the same connection, each oriented its own
way; both nodes' socket events arrive in any order relative to the reports; the reports
are handled by either of two replicas (shared work) while every replica learns every
socket event (state). Whatever happens, exactly one enriched record comes out and its
counters are one report's counters.
"""

from __future__ import annotations

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
