"""DNS names: only the address answers on the question's CNAME chain are named after the
question (through the Python path and the compiled core alike)."""

from __future__ import annotations

import orjson
import pytest
from flowscope.enricher.enriching import Enricher
from flowscope.enricher.names import NameCache

from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import A, enricher, flow


def exchange(qname: str, answers: list[dict]) -> dict:
    return {"observer": "node-1", "time_ns": 1, "id": 1, "qname": qname, "qtype": "A",
            "rcode": "NOERROR", "client": A, "client_port": 3333, "server": "10.96.0.10",
            "server_port": 53, "answers": answers}  # fmt: skip


def record(name: str, kind: str, data: str) -> dict:
    return {"name": name, "type": kind, "ttl": 300, "data": data}


def domain(e: Enricher, address: str, port: int) -> str | None:
    out = e.flow_lines([flow("node-1", A, address, port, 443, initiator=True, end_ns=2)])
    found: str | None = orjson.loads(next(iter(out.lines.values()))[0]).get("destination.domain")
    return found


@pytest.mark.parametrize("native", [False, True])
def test_address_off_the_cname_chain_is_not_named_after_the_question(native: bool) -> None:
    e = enricher(Clock(), native=native)
    e.learn_dns([exchange("a.example.com", [
        record("a.example.com", "CNAME", "b.example.net"),
        record("b.example.net", "A", "198.51.100.1"),
        record("unrelated.example.org", "A", "198.51.100.99"),
    ])])  # fmt: skip
    assert domain(e, "198.51.100.1", 40000) == "a.example.com"
    assert domain(e, "198.51.100.99", 40001) is None


def test_chain_names_are_compared_as_questions_are_kept() -> None:
    cache = NameCache(60, 3600, 10, Clock())
    learned = cache.learn("10.1.0.1", "A.Example.com.", [
        record("a.example.com.", "CNAME", "B.example.NET."),
        record("b.example.net", "CNAME", "c.example.net"),
        record("C.EXAMPLE.NET.", "A", "192.0.2.1"),
        record("d.example.net", "A", "192.0.2.2"),
    ])  # fmt: skip
    assert learned == 1
    assert cache.lookup("10.1.0.1", "192.0.2.1") == "a.example.com"
    assert cache.lookup("10.1.0.1", "192.0.2.2") is None


def test_cname_loop_ends_the_walk() -> None:
    cache = NameCache(60, 3600, 10, Clock())
    cache.learn("10.1.0.1", "a.example", [
        record("a.example", "CNAME", "b.example"),
        record("b.example", "CNAME", "a.example"),
        record("b.example", "A", "192.0.2.1"),
        record("c.example", "A", "192.0.2.2"),
    ])  # fmt: skip
    assert cache.lookup("10.1.0.1", "192.0.2.1") == "a.example"
    assert cache.lookup("10.1.0.1", "192.0.2.2") is None


def test_cname_off_the_chain_leads_nowhere() -> None:
    cache = NameCache(60, 3600, 10, Clock())
    cache.learn("10.1.0.1", "a.example", [
        record("x.example", "CNAME", "y.example"),  # not reached from the question
        record("y.example", "A", "192.0.2.1"),
        record("a.example", "AAAA", "2001:db8::1"),
    ])  # fmt: skip
    assert cache.lookup("10.1.0.1", "192.0.2.1") is None
    assert cache.lookup("10.1.0.1", "2001:db8::1") == "a.example"
