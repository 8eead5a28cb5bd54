"""Observers' memory is bounded: departed nodes and old minutes expire, the number of
nodes is capped, a node's minutes are compact, and a raw record's observer must be a
node's name — without changing how any report of the last day is judged."""

from __future__ import annotations

import random
import sys

import orjson
import pytest
from flowscope.core import codec
from flowscope.enricher import enriching
from flowscope.enricher.enriching import HISTORY, MINUTE_NS, Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable

TTL = 300.0
DAY_NS = 86_400 * 10**9
NOW = 1_750_000_000 * 10**9  # the replica's clock in these tests (unix ns)


def test_expire_forgets_nodes_gone_for_a_day_and_their_old_minutes() -> None:
    observers = Observers(TTL, clock=lambda: NOW)
    for m in range(1_440):  # node-old lived a day, three days ago
        observers.saw("node-old", NOW - 3 * DAY_NS + m * MINUTE_NS)
    for m in range(100):  # node-live ran for 100 minutes 2 000 minutes ago, and runs now
        observers.saw("node-live", NOW - 2_000 * MINUTE_NS + m * MINUTE_NS)
        observers.saw("node-live", NOW - 99 * MINUTE_NS + m * MINUTE_NS)
    observers.expire()
    assert list(observers.seen) == ["node-live"] and list(observers.minutes) == ["node-live"]
    kept = observers.minutes["node-live"]
    assert len(kept) == 100 and kept[0] == (NOW - 99 * MINUTE_NS) // MINUTE_NS
    assert observers.active("node-live", NOW - 50 * MINUTE_NS)
    assert not observers.active("node-old", NOW - 3 * DAY_NS + 60 * MINUTE_NS)  # both kept


def test_expire_counts_from_the_newest_event_when_the_clock_is_later() -> None:
    """Events all older than the clock's day (a stream read long after; the tests' and
    benchmarks' 2023 times): counted from the wall clock, every node was forgotten at each
    upkeep and cross-node reports were kept twice (a bench run: 85 230 of 85 216)."""
    observers = Observers(TTL, clock=lambda: NOW)
    old = NOW - 30 * DAY_NS
    for m in range(100):
        observers.saw("node-a", old + m * MINUTE_NS)
    observers.saw("node-b", old - 2 * DAY_NS)  # gone a day before node-a's newest event
    observers.expire()
    assert list(observers.seen) == ["node-a"]
    assert observers.active("node-a", old + 50 * MINUTE_NS)


def test_expire_keeps_every_judgment_within_the_window() -> None:
    """Any report no older than HISTORY minutes before now is judged as before expiry."""
    rng = random.Random(7)
    for _ in range(20):
        fresh = Observers(rng.choice([60.0, TTL, 900.0]))
        span = 3 * DAY_NS
        for _ in range(rng.randrange(1, 400)):
            node = f"node-{rng.randrange(8)}"
            fresh.saw(node, NOW - rng.randrange(span) + rng.choice([0, 0, 0, DAY_NS]))
        expired = Observers(fresh.ttl_ns / 1e9)
        expired.seen = dict(fresh.seen)
        expired.minutes = {node: type(m)(m.typecode, m) for node, m in fresh.minutes.items()}
        expired.expire(NOW)
        assert sum(map(len, expired.minutes.values())) <= sum(map(len, fresh.minutes.values()))
        for _ in range(300):
            at = NOW - rng.randrange(HISTORY * MINUTE_NS + 1) + rng.randrange(2 * DAY_NS)
            node = f"node-{rng.randrange(8)}"
            assert expired.active(node, at) == fresh.active(node, at), (node, at)
        for node in set(fresh.seen) - set(expired.seen):  # forgotten: older reports keep both
            assert fresh.seen[node] <= NOW - HISTORY * MINUTE_NS - fresh.ttl_ns


def test_the_number_of_nodes_is_bounded_oldest_first() -> None:
    observers = Observers(TTL, max_nodes=100)
    for n in range(1_000):
        observers.saw(f"node-{n}", NOW + n * 10**9)
        assert len(observers) <= 100 and len(observers.minutes) <= 100
        assert f"node-{n}" in observers.seen  # the node just seen is never the one forgotten
    kept = {int(node.split("-")[1]) for node in observers.seen}
    assert kept == set(range(1_000 - len(kept), 1_000))  # the newest ones
    assert set(observers.minutes) == set(observers.seen)
    assert not observers.active("node-0", NOW)  # forgotten: its reports are all kept


def test_an_old_newcomer_is_kept_and_others_forgotten() -> None:
    observers = Observers(TTL, max_nodes=3)
    for n in range(3):
        observers.saw(f"node-{n}", NOW + n)
    observers.saw("late", 0)  # the oldest event of all: still kept, as the Python path does
    assert "late" in observers.seen and len(observers) <= 3 and "node-0" not in observers.seen


def test_the_default_bound_holds_a_large_cluster() -> None:
    assert enriching.MAX_OBSERVERS >= 5_000  # Kubernetes supports 5,000 nodes a cluster
    assert Observers(TTL)._max_nodes == enriching.MAX_OBSERVERS


def test_a_full_day_of_minutes_is_compact() -> None:
    observers = Observers(TTL)
    for m in range(HISTORY + 10):
        observers.saw("node-1", NOW + m * MINUTE_NS)
    minutes = observers.minutes["node-1"]
    assert len(minutes) == HISTORY
    assert sys.getsizeof(minutes) < 8 * 1024  # a set of 1,500 ints: ~170 KB with the ints


def test_out_of_order_minutes_stay_sorted_and_unique() -> None:
    rng = random.Random(3)
    observers = Observers(TTL)
    added: set[int] = set()
    for _ in range(3_000):
        minute = rng.randrange(2_000)
        observers.saw("node-1", minute * MINUTE_NS + rng.randrange(MINUTE_NS))
        added.add(minute)
    assert list(observers.minutes["node-1"]) == sorted(added)[-HISTORY:]


# ------------------------------------------------------------ observer names


def _enricher(native: bool) -> Enricher:
    resolver = LocalResolver(frozenset({"10.0.0.1"}), "node-a")
    return Enricher(
        resolver, SocketTable(100, 30), NameCache(60, 3600, 100), Observers(TTL), native=native
    )


def _flow(observer: str) -> dict[str, object]:
    return {
        "observer": observer, "start_ns": 1, "end_ns": NOW, "end_reason": "active_timeout",
        "proto": 6, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 40000, "dport": 443,
        "bytes": 100, "packets": 2, "rbytes": 50, "rpackets": 1, "tcp_flags": 0x12,
    }  # fmt: skip


BAD_NAMES = ["", "n" * 254, "\u00e9" * 254]
GOOD_NAMES = ["n", "n" * 253, "\u00e9" * 253]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("way", ["dicts", "body"])
def test_a_flow_observer_must_be_a_node_name(native: bool, way: str) -> None:
    e = _enricher(native)
    batch = [_flow(name) for name in [*BAD_NAMES, *GOOD_NAMES]]
    if way == "dicts":
        out = e.flow_lines(batch)
    else:
        body = b"".join(orjson.dumps(r) + b"\n" for r in batch)
        headers = {"Flowscope-Schema": codec.RAW_FLOW.header, "Flowscope-Count": str(len(batch))}
        out = e.flow_batch(headers, body)
    assert [record["observer"] for record, _ in out.bad] == BAD_NAMES
    assert all("observer must be a node name" in str(error) for _, error in out.bad)
    assert out.tally.records_out == len(GOOD_NAMES)
    assert set(e.observers.seen) == set(GOOD_NAMES)


def test_socket_and_dns_observers_must_be_node_names() -> None:
    e = _enricher(True)
    sockets = [
        {"observer": name, "time_ns": NOW, "event": "connect", "proto": 6, "src": "10.0.0.1",
         "sport": 40000, "dst": "8.8.8.8", "dport": 443, "pid": 7, "tid": 7, "comm": "curl"}
        for name in [*BAD_NAMES, *GOOD_NAMES]
    ]  # fmt: skip
    exchanges = [
        {"observer": name, "time_ns": NOW, "id": 1, "qname": "example.com", "qtype": "A",
         "rcode": "NOERROR", "client": "10.0.0.1", "client_port": 5353, "server": "10.0.0.2",
         "server_port": 53, "answers": []}
        for name in [*BAD_NAMES, *GOOD_NAMES]
    ]  # fmt: skip
    for bad in (e.check_sockets(sockets), e.learn_sockets(sockets), e.learn_dns(exchanges)):
        assert [record["observer"] for record, _ in bad] == BAD_NAMES
        assert all("observer must be a node name" in str(error) for _, error in bad)
    assert set(e.observers.seen) == set(GOOD_NAMES)
