"""DNS names: a CNAME answered alone, its target's address in a later message (the
client asks for the target next) is named after the name the client first asked."""

from __future__ import annotations

import pytest
from flowscope.enricher.names import NameCache

from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import enricher
from tests.unit.enricher.test_names_chain import domain, exchange, record

C = "10.1.0.5"


def cname(owner: str, target: str, ttl: int = 300) -> dict:
    return {"name": owner, "type": "CNAME", "ttl": ttl, "data": target}


def address(owner: str, data: str, ttl: int = 300) -> dict:
    return {"name": owner, "type": "A", "ttl": ttl, "data": data}


def test_a_cname_alone_then_its_target_folds_to_the_first_question() -> None:
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net")])
    assert cache.learn(C, "Edge.CDN.net.", [address("edge.cdn.net", "192.0.2.7")]) == 1
    assert cache.lookup(C, "192.0.2.7") == "www.example.com"
    assert cache.lookup("10.1.0.6", "192.0.2.7") is None


def test_a_chain_over_three_messages_folds_to_the_first_question() -> None:
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "a.example", [cname("a.example", "b.example")])
    cache.learn(C, "b.example", [cname("b.example", "c.example"), cname("c.example", "d.example")])
    cache.learn(C, "d.example", [address("d.example", "192.0.2.8")])
    assert cache.lookup(C, "192.0.2.8") == "a.example"
    cache.learn(C, "c.example", [address("c.example", "192.0.2.9")])
    assert cache.lookup(C, "192.0.2.9") == "a.example"


def test_a_cname_loop_across_messages_ends() -> None:
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "a.example", [cname("a.example", "b.example")])
    cache.learn(C, "b.example", [cname("b.example", "a.example")])
    cache.learn(C, "a.example", [address("a.example", "192.0.2.1")])
    cache.learn(C, "b.example", [address("b.example", "192.0.2.2")])
    assert cache.lookup(C, "192.0.2.1") == "a.example"
    assert cache.lookup(C, "192.0.2.2") == "a.example"


def test_an_answered_chain_leaves_no_alias() -> None:
    """The client had its address: a later question for the target is its own."""
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net"),
                                       address("edge.cdn.net", "192.0.2.7")])  # fmt: skip
    cache.learn(C, "edge.cdn.net", [address("edge.cdn.net", "192.0.2.99")])
    assert cache.lookup(C, "192.0.2.7") == "www.example.com"
    assert cache.lookup(C, "192.0.2.99") == "edge.cdn.net"


def test_a_cname_off_the_chain_leaves_no_alias() -> None:
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net"),
                                       cname("bank.example", "evil.example")])  # fmt: skip
    cache.learn(C, "evil.example", [address("evil.example", "192.0.2.66")])
    assert cache.lookup(C, "192.0.2.66") == "evil.example"


@pytest.mark.parametrize(("ttl", "later", "named"), [
    (10, 59.0, "www.example.com"),  # the floor: 60 s
    (10, 61.0, "edge.cdn.net"),
    (7200, 3599.0, "www.example.com"),  # the cap: 3600 s
    (7200, 3601.0, "edge.cdn.net"),
])  # fmt: skip
def test_an_alias_lives_as_long_as_its_clamped_ttl(ttl: int, later: float, named: str) -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 100, clock)
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net", ttl)])
    clock.now += later
    cache.learn(C, "edge.cdn.net", [address("edge.cdn.net", "192.0.2.7")])
    assert cache.lookup(C, "192.0.2.7") == named


def test_a_replayed_alias_counts_from_when_it_was_received() -> None:
    """Replayed answers (``age``): the alias is judged at the question's receipt."""
    clock = Clock()
    cache = NameCache(60, 3600, 100, clock)
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net", 60)], age=200)
    cache.learn(C, "edge.cdn.net", [address("edge.cdn.net", "192.0.2.7", 600)], age=190)
    cache.learn(C, "late.cdn.net", [address("late.cdn.net", "192.0.2.9", 600)])
    assert cache.lookup(C, "192.0.2.7") == "www.example.com"
    cache.learn(C, "www.example.com", [cname("www.example.com", "late.cdn.net", 60)], age=200)
    cache.learn(C, "late.cdn.net", [address("late.cdn.net", "192.0.2.10", 600)])
    assert cache.lookup(C, "192.0.2.10") == "late.cdn.net"


def test_the_aliases_the_other_addresses_of_a_client_learn() -> None:
    cache = NameCache(60, 3600, 100, Clock())
    cache.learn(C, "www.example.com", [cname("www.example.com", "edge.cdn.net")], also=("fd00::5",))
    cache.learn("fd00::5", "edge.cdn.net", [address("edge.cdn.net", "192.0.2.7")])
    assert cache.lookup("fd00::5", "192.0.2.7") == "www.example.com"


def test_aliases_are_bounded() -> None:
    """A flood of CNAME-only answers keeps at most ``max_entries`` aliases; the newest
    stay."""
    cache = NameCache(60, 3600, 4, Clock())
    chain = [cname(f"n{i}.example", f"n{i + 1}.example") for i in range(50)]
    cache.learn(C, "n0.example", chain)
    for i in range(10):
        cache.learn(C, f"q{i}.example", [cname(f"q{i}.example", f"t{i}.example")])
    assert len(cache._aliases) <= 4
    cache.learn(C, "t9.example", [address("t9.example", "192.0.2.7")])
    cache.learn(C, "n50.example", [address("n50.example", "192.0.2.8")])
    assert cache.lookup(C, "192.0.2.7") == "q9.example"
    assert cache.lookup(C, "192.0.2.8") == "n50.example"


@pytest.mark.parametrize("native", [False, True])
def test_the_compiled_core_and_python_name_the_folded_chain_alike(native: bool) -> None:
    e = enricher(Clock(), native=native)
    e.learn_dns([exchange("www.example.com", [record("www.example.com", "CNAME", "edge.cdn.net")])])
    e.learn_dns([exchange("edge.cdn.net", [record("edge.cdn.net", "A", "198.51.100.7")])])
    assert domain(e, "198.51.100.7", 40000) == "www.example.com"
