"""DNS name cache: TTL clamping, second-chance bound, CNAME folding (property tests)."""

from __future__ import annotations

from flowscope.enricher.names import NameCache
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.enricher.cluster import Clock

addresses = st.sampled_from([f"192.0.2.{i}" for i in range(8)] + ["2001:db8::1", "2001:db8::2"])
clients = st.sampled_from(["10.1.0.1", "10.1.0.2", "fd00::1"])
names = st.from_regex(r"[a-z]{1,8}\.(com|net|example)", fullmatch=True)
ttls = st.integers(min_value=0, max_value=100_000)
# (learn | lookup | wait, client, name, address, TTL or seconds waited)
cache_ops = st.lists(
    st.tuples(st.sampled_from(["learn", "lookup", "wait"]), clients, names, addresses,
              st.integers(0, 120)),
    min_size=1, max_size=80,
)  # fmt: skip


def answer_chain(qname: str, cnames: list[str], address: str, ttl: int) -> list[dict]:
    chain, previous = [], qname
    for cname in cnames:
        chain.append({"name": previous, "type": "CNAME", "ttl": ttl, "data": cname})
        previous = cname
    kind = "AAAA" if ":" in address else "A"
    return [*chain, {"name": previous, "type": kind, "ttl": ttl, "data": address}]


@settings(deadline=None)
@given(client=clients, qname=names, cnames=st.lists(names, max_size=4), address=addresses,
       ttl=ttls)  # fmt: skip
def test_cname_chain_folds_to_the_question_name(
    client: str, qname: str, cnames: list[str], address: str, ttl: int
) -> None:
    cache = NameCache(ttl_min=60, ttl_max=3600, max_entries=100, clock=Clock())
    cache.learn(client, qname.upper() + ".", answer_chain(qname, cnames, address, ttl))
    assert cache.lookup(client, address) == qname  # lower-case, no trailing dot
    for other in ("10.9.9.9",):
        assert cache.lookup(other, address) is None  # per client


@settings(deadline=None)
@given(ttl=ttls, ttl_min=st.integers(0, 600), ttl_max=st.integers(1, 7200))
def test_lifetime_is_the_ttl_clamped_to_floor_and_cap(ttl: int, ttl_min: int, ttl_max: int) -> None:
    clock = Clock()
    cache = NameCache(ttl_min, ttl_max, 10, clock=clock)
    cache.learn("10.1.0.1", "a.com", answer_chain("a.com", [], "192.0.2.1", ttl))
    lifetime = min(max(ttl, ttl_min), max(ttl_max, ttl_min))
    probe = NameCache(ttl_min, ttl_max, 10, clock=clock)  # a hit extends: probe a twin
    probe.learn("10.1.0.1", "a.com", answer_chain("a.com", [], "192.0.2.1", ttl))
    clock.now += lifetime - 0.001
    if lifetime > 0.001:
        assert probe.lookup("10.1.0.1", "192.0.2.1") == "a.com"
    clock.now += 0.002
    assert cache.lookup("10.1.0.1", "192.0.2.1") is None


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.tuples(clients, names, addresses), min_size=1, max_size=60),
       bound=st.integers(1, 10))  # fmt: skip
def test_lru_bound_holds_and_recent_entries_survive(
    ops: list[tuple[str, str, str]], bound: int
) -> None:
    cache = NameCache(60, 3600, bound, clock=Clock())
    for client, name, address in ops:
        cache.learn(client, name, answer_chain(name, [], address, 300))
        assert len(cache) <= bound
    client, name, address = ops[-1]
    assert cache.lookup(client, address) == name  # the newest answer always wins


def test_a_hit_keeps_the_entry_eviction_would_take_next() -> None:
    # second chance: a new entry starts unmarked, a hit marks it; eviction passes
    # marked entries to the newest end (unmarked) and drops the first unmarked one
    cache = NameCache(60, 3600, 3, clock=Clock())

    def learn(name: str) -> None:
        cache.learn("10.1.0.1", name, answer_chain(name, [], f"192.0.2.{ord(name[0])}", 300))

    def held() -> list[str]:
        return [n for n in "abcde" if cache.lookup("10.1.0.1", f"192.0.2.{ord(n)}") == n]

    for name in "abcd":  # none marked: the oldest goes
        learn(name)
    assert [entry[0] for entry in cache._entries.values()] == ["b", "c", "d"]
    assert cache.lookup("10.1.0.1", f"192.0.2.{ord('b')}") == "b"  # the oldest, now marked
    learn("e")  # "c", the oldest unmarked, goes instead of "b"
    assert [entry[0] for entry in cache._entries.values()] == ["d", "e", "b"]
    assert [entry[3] for entry in cache._entries.values()] == [False, False, False]
    assert held() == ["b", "d", "e"]
    assert cache._entries[("10.1.0.1", f"192.0.2.{ord('e')}")][2] == b'"e"'  # its JSON form


def test_hit_extends_entry_to_the_floor() -> None:
    clock = Clock()
    cache = NameCache(ttl_min=60, ttl_max=3600, max_entries=10, clock=clock)
    cache.learn("10.1.0.1", "a.com", answer_chain("a.com", [], "192.0.2.1", 5))
    for _ in range(5):  # a long-lived connection keeps reporting: the name stays
        clock.now += 50
        assert cache.lookup("10.1.0.1", "192.0.2.1") == "a.com"
    clock.now += 61
    assert cache.lookup("10.1.0.1", "192.0.2.1") is None


def test_non_address_answers_and_empty_names_ignored() -> None:
    cache = NameCache(60, 3600, 10, clock=Clock())
    assert (
        cache.learn("10.1.0.1", "a.com", [{"name": "a.com", "type": "TXT", "ttl": 1, "data": "x"}])
        == 0
    )
    assert cache.learn("10.1.0.1", ".", answer_chain(".", [], "192.0.2.1", 5)) == 0
    assert len(cache) == 0


@settings(max_examples=100, deadline=None)
@given(ops=cache_ops, bound=st.integers(1, 12))
def test_answer_counts_follow_the_entries(
    ops: list[tuple[str, str, str, str, int]], bound: int
) -> None:
    """``_answers`` counts the entries per address through learning, LRU evictions and
    expiries; ``generation`` moves whenever an address gets its first entry, so that an
    address once seen unanswered is rechecked (what the compiled core relies on)."""
    clock = Clock()
    cache = NameCache(ttl_min=10, ttl_max=100, max_entries=bound, clock=clock)
    for op, client, name, address, amount in ops:
        before, answered = cache.generation, set(cache._answers)
        if op == "learn":
            cache.learn(client, name, answer_chain(name, [], address, amount))
        elif op == "lookup":
            found = cache.lookup(client, address)
            assert found is None or found == cache._entries[(client, address)][0]
        else:
            clock.now += amount
        counts: dict[str, int] = {}
        for _, addr in cache._entries:
            counts[addr] = counts.get(addr, 0) + 1
        assert cache._answers == counts
        assert (cache.generation != before) == bool(set(counts) - answered)
        if op == "lookup" and address not in counts:
            assert cache.lookup(client, address) is None


@settings(max_examples=100, deadline=None)
@given(ops=cache_ops, bound=st.integers(1, 12))
def test_an_entry_is_its_keys_while_it_has_four_items(
    ops: list[tuple[str, str, str, str, int]], bound: int
) -> None:
    """The promise the compiled core keeps entries on (flowcore.c, name ways): learning a
    key again updates its entry in place, and an entry dropped (evicted, or expired by a
    lookup) is emptied — so any entry list ever handed out is the one under its key
    exactly while it has its four items."""
    clock = Clock()
    cache = NameCache(ttl_min=10, ttl_max=100, max_entries=bound, clock=clock)
    seen: list[tuple[tuple[str, str], list]] = []
    for op, client, name, address, amount in ops:
        if op == "learn":
            cache.learn(client, name, answer_chain(name, [], address, amount))
        elif op == "lookup":
            cache.lookup(client, address)
        else:
            clock.now += amount
        seen += [(key, entry) for key, entry in cache._entries.items()]
        for key, entry in seen:
            current = cache._entries.get(key)
            assert (current is entry) == (len(entry) == 4), (key, entry, current)
            assert len(entry) in (0, 4)


def test_learning_a_key_again_updates_its_entry_in_place() -> None:
    clock = Clock()
    cache = NameCache(ttl_min=10, ttl_max=100, max_entries=2, clock=clock)
    cache.learn("10.1.0.1", "a.com", answer_chain("a.com", [], "192.0.2.1", 30))
    entry = cache._entries[("10.1.0.1", "192.0.2.1")]
    clock.now += 5
    cache.learn("10.1.0.1", "b.com", answer_chain("b.com", [], "192.0.2.1", 50))
    assert cache._entries[("10.1.0.1", "192.0.2.1")] is entry
    assert entry == ["b.com", clock.now + 50, b'"b.com"', False]  # never looked up
    for n in range(2):  # evicted (a second chance first): emptied
        cache.learn("10.1.0.2", "c.com", answer_chain("c.com", [], f"192.0.2.{9 + n}", 50))
    assert ("10.1.0.1", "192.0.2.1") not in cache._entries and entry == []
