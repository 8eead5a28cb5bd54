"""DNS name cache, as a reviewer probed it: a shorter-lived answer for another name does
not cut a valid mapping short, and an entry a flow looked up outlives never-used ones
when the bound evicts (through the Python path and the compiled core alike)."""

from __future__ import annotations

import orjson
import pytest
from flowscope.enricher.enriching import Enricher
from flowscope.enricher.names import NameCache

from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import A, enricher, flow

X = "203.0.113.5"


def exchange(qname: str, address: str, ttl: int, client: str = A) -> dict:
    return {"observer": "node-1", "time_ns": 1, "id": 1, "qname": qname, "qtype": "A",
            "rcode": "NOERROR", "client": client, "client_port": 3333, "server": "10.96.0.10",
            "server_port": 53, "answers": [{"name": qname, "type": "A", "ttl": ttl,
                                            "data": address}]}  # fmt: skip


def answer(qname: str, address: str, ttl: int) -> list[dict]:
    return [{"name": qname, "type": "A", "ttl": ttl, "data": address}]


def destination_domain(e: Enricher, address: str, port: int = 40000) -> str | None:
    out = e.flow_lines([flow("node-1", A, address, port, 443, initiator=True, end_ns=2)])
    found: str | None = orjson.loads(next(iter(out.lines.values()))[0]).get("destination.domain")
    return found


@pytest.mark.parametrize("native", [False, True])
def test_short_lived_answer_for_another_name_keeps_the_valid_one(native: bool) -> None:
    clock = Clock()
    e = enricher(clock, native=native)
    e.learn_dns([exchange("api.example.com", X, 3600)])
    clock.now += 10
    e.learn_dns([exchange("tracker.example.net", X, 0)])  # 60 s floor: outlived by api's
    clock.now += 120
    assert destination_domain(e, X) == "api.example.com"


@pytest.mark.parametrize("native", [False, True])
def test_longer_lived_answer_for_another_name_takes_over(native: bool) -> None:
    clock = Clock()
    e = enricher(clock, native=native)
    e.learn_dns([exchange("api.example.com", X, 30)])
    clock.now += 10
    e.learn_dns([exchange("www.example.org", X, 600)])
    assert destination_domain(e, X) == "www.example.org"


def test_same_name_is_renewed_with_the_new_answer() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 10, clock)
    cache.learn(A, "api.example.com", answer("api.example.com", X, 3600))
    cache.learn(A, "api.example.com", answer("api.example.com", X, 0))  # as today: renewed
    clock.now += 61
    assert cache.lookup(A, X) is None


def test_expired_entry_is_replaced_by_another_name() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 10, clock)
    cache.learn(A, "api.example.com", answer("api.example.com", X, 100))
    clock.now += 101
    cache.learn(A, "www.example.org", answer("www.example.org", X, 0))
    assert cache.lookup(A, X) == "www.example.org"


def test_looked_up_entry_survives_eviction_unused_ones_do_not() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 3, clock)
    for n in (1, 2, 3):
        cache.learn(A, f"n{n}.example", answer(f"n{n}.example", f"198.51.100.{n}", 300))
    assert cache.lookup(A, "198.51.100.1") == "n1.example"  # the oldest, in use
    cache.learn(A, "n4.example", answer("n4.example", "198.51.100.4", 300))
    # "1" had its second chance at the newest end; "2", the oldest unused, went
    assert [key[1] for key in cache._entries] == ["198.51.100.3", "198.51.100.4",
                                                   "198.51.100.1"]  # fmt: skip
    assert cache.lookup(A, "198.51.100.2") is None


def test_answer_being_learned_is_not_evicted_by_its_own_learning() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 2, clock)
    for n in (1, 2):
        cache.learn(A, f"n{n}.example", answer(f"n{n}.example", f"198.51.100.{n}", 300))
        assert cache.lookup(A, f"198.51.100.{n}") is not None  # both used
    cache.learn(A, "n3.example", answer("n3.example", "198.51.100.3", 300))
    assert cache.lookup(A, "198.51.100.3") == "n3.example"
    assert len(cache) == 2 and len(cache._answers) == 2


@pytest.mark.parametrize("native", [False, True])
def test_flow_lookup_protects_its_entry_from_eviction(native: bool) -> None:
    clock = Clock()
    e = enricher(clock, native=native)
    e.names.max_entries = 3
    for n in (1, 2, 3):
        e.learn_dns([exchange(f"n{n}.example", f"198.51.100.{n}", 300)])
    clock.now += 1
    assert destination_domain(e, "198.51.100.1") == "n1.example"  # a flow uses the oldest
    e.learn_dns([exchange("n4.example", "198.51.100.4", 300)])
    assert destination_domain(e, "198.51.100.1", 40001) == "n1.example"
    assert destination_domain(e, "198.51.100.2", 40002) is None  # never used: evicted
