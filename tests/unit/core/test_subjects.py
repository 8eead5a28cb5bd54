"""Subjects: every variable part becomes exactly one token."""

from __future__ import annotations

from flowscope.core import subjects
from hypothesis import given
from hypothesis import strategies as st


def test_node_names_are_one_token() -> None:
    assert subjects.raw_flows("ip-10-0-0-1.ec2.internal") == (
        "flowscope.raw.flows.ip-10-0-0-1_ec2_internal"
    )
    assert subjects.raw_dns("my node") == "flowscope.raw.dns.my_node"
    assert (
        subjects.flows("payments", subjects.EXTERNAL_TOKEN) == "flowscope.flows.payments._external"
    )
    assert subjects.dlq("enricher") == "flowscope.dlq.enricher"
    assert subjects.token("") == "_"


@given(st.text())
def test_token_never_splits_a_subject(name: str) -> None:
    tok = subjects.token(name)
    assert tok
    assert not any(c in tok for c in ".*> \t\r\n")
    assert len(subjects.raw_sockets(name).split(".")) == 4


def test_streams_cover_every_published_subject() -> None:
    covered = {s for spec in subjects.STREAMS for s in spec.subjects}
    assert covered == {
        subjects.RAW_ALL,
        subjects.FLOWS_ALL,
        subjects.DNS_ALL,
        subjects.DLQ_ALL,
    }
