"""Socket table: closes awaiting their grace stay within the table's bound (an evicted or
replaced entry's pending close is dropped), and expiry keeps its schedule."""

from __future__ import annotations

import gc

from flowscope.enricher.processes import SocketOwner, SocketTable

from tests.unit.enricher.cluster import Clock

BOUND = 20


def event(kind: str, sport: int, proto: int = 6, dst: str = "10.1.0.9") -> dict:
    return {"observer": "n1", "event": kind, "proto": proto, "src": "10.1.0.5", "sport": sport,
            "dst": dst, "dport": 80, "pid": 7, "comm": "app", "container_id": "c1"}  # fmt: skip


def owners_alive() -> int:
    gc.collect()
    return sum(type(o) is SocketOwner for o in gc.get_objects())


def churn(table: SocketTable, ports: range, proto: int = 6) -> None:
    """Short connections, each closed right away: all within one grace."""
    for port in ports:
        table.learn(event("connect" if proto == 6 else "udp", port, proto))
        table.learn(event("close", port, proto, "10.1.0.9" if proto == 6 else ""))


def test_pending_closes_of_evicted_entries_are_not_kept() -> None:
    """Many more closed connections than the bound within one grace: the table keeps
    at most a small multiple of its bound in owners, not one per close."""
    before = owners_alive()
    table = SocketTable(BOUND, 30, clock=Clock())
    churn(table, range(1, 50 * BOUND))
    churn(table, range(1, 50 * BOUND), proto=17)  # UDP closes name the local end
    assert len(table) == BOUND
    assert owners_alive() - before <= 2 * BOUND
    assert len(table._closing) <= 2 * BOUND


def test_pending_closes_of_replaced_entries_are_not_kept() -> None:
    """One 5-tuple reused over and over (connect, close, connect, …): each new connect
    replaces the entry, and the replaced owner's pending close goes with it."""
    before = owners_alive()
    table = SocketTable(BOUND, 30, clock=Clock())
    for _ in range(50 * BOUND):
        churn(table, range(1, 2))
    assert len(table) == 1
    assert owners_alive() - before <= 2 * BOUND


def test_expiry_keeps_its_schedule_through_the_churn() -> None:
    """An entry closed before a churn of other connections (kept by flow hits) is still
    joinable within its grace and forgotten after it; an open one is kept; the count
    expire() returns is that of the table's entries it forgot."""
    clock = Clock()
    table = SocketTable(BOUND, 30, clock=clock)
    table.learn(event("connect", 60000))
    table.learn(event("connect", 60001))
    table.learn(event("close", 60000))
    for start in range(1, 50 * BOUND, BOUND // 4):
        clock.now += 0.1
        churn(table, range(start, start + BOUND // 4))
        assert table.find("n1", 6, "10.1.0.5", 60000, "10.1.0.9", 80) is not None
        assert table.find("n1", 6, "10.1.0.5", 60001, "10.1.0.9", 80) is not None
    closed_at = 1000.0
    clock.now = closed_at + 29.9
    table.expire()
    assert table.find("n1", 6, "10.1.0.5", 60000, "10.1.0.9", 80) is not None
    clock.now = closed_at + 30
    assert table.expire() == 1
    assert table.find("n1", 6, "10.1.0.5", 60000, "10.1.0.9", 80) is None
    assert table.find("n1", 6, "10.1.0.5", 60001, "10.1.0.9", 80) is not None
    clock.now += 60  # the churned entries the table holds, all closed
    assert table.expire() == BOUND - 2
    assert len(table) == 1 and not table._closing
