"""Hostile raw records never crash the enricher: bad ones are returned, good ones validate."""

from __future__ import annotations

from typing import Any

from flowscope.core import records
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.enricher.test_enriching import enricher, flow, sock

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.sampled_from([-1, 0, 255, 256, 65535, 65536, 2**63, 2**64]),
    st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["10.1.0.5", "10.2.0.7", "::1", "fe80::1%eth0", "256.1.1.1", "", "forward",
                     "active_timeout", "connect", "accept", "close"]),
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(junk)  # not even an object
    record = dict(base)
    for key in draw(st.lists(st.sampled_from([*base, "extra"]), max_size=4)):
        if draw(st.booleans()):
            record[key] = draw(junk)
        else:
            record.pop(key, None)
    return record


FLOW = flow("node-1", "10.1.0.5", "10.2.0.7", 40000, 80, initiator=True)
SOCKET = sock("node-1", "connect", "10.1.0.5", 40000, "10.2.0.7", 80, 7, "ca")
DNS = {"observer": "node-1", "time_ns": 1, "id": 1, "qname": "a.example", "qtype": "A",
       "rcode": "NOERROR", "client": "10.1.0.5", "client_port": 1000, "server": "10.2.0.7",
       "server_port": 53, "answers": [{"name": "a.example", "type": "A", "ttl": 5,
                                       "data": "192.0.2.1"}]}  # fmt: skip


@settings(deadline=None, max_examples=300)
@given(
    flows=st.lists(mutated(FLOW), max_size=5),
    sockets=st.lists(mutated(SOCKET), max_size=3),
    dns=st.lists(mutated(DNS), max_size=3),
)
def test_any_mix_of_records_is_sorted_into_good_and_bad(
    flows: list[Any], sockets: list[Any], dns: list[Any]
) -> None:
    e = enricher()
    e.learn_sockets(sockets)
    e.learn_dns(dns)
    out = e.flows(flows)
    good = [r for recs in out.by_subject.values() for r in recs]
    assert len(good) + len(out.bad) + out.tally.dedup_dropped == len(flows)
    for record in good:
        records.validate_flow(record)
    dns_out = e.dns(dns)
    for recs in dns_out.by_subject.values():
        for record in recs:
            records.validate_dns(record)
