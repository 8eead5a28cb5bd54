"""Socket events out of order: a close published before the connect or accept it names
(a start-up snapshot's event after the live close) still expires the entry on time."""

from __future__ import annotations

from flowscope.enricher.processes import SocketTable

from tests.unit.enricher.cluster import Clock


def event(kind: str, sport: int = 40000, dst: str = "10.1.0.9") -> dict:
    return {"observer": "n1", "event": kind, "proto": 6, "src": "10.1.0.5", "sport": sport,
            "dst": dst, "dport": 80, "pid": 7, "comm": "app", "container_id": "c1"}  # fmt: skip


def joinable(table: SocketTable, sport: int = 40000) -> bool:
    return table.find("n1", 6, "10.1.0.5", sport, "10.1.0.9", 80) is not None


def test_close_before_connect_expires_grace_after_the_close() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("close"))
    clock.now += 10
    table.learn(event("connect"))
    assert joinable(table)  # its last interval still joins
    clock.now += 19
    assert table.expire() == 0 and joinable(table)
    clock.now += 2  # 31 s after the close
    assert table.expire() == 1 and not joinable(table)


def test_close_before_accept_is_applied_once() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("close"))
    table.learn(event("accept"))
    clock.now += 31
    assert table.expire() == 1
    table.learn(event("accept"))  # a later connection on the same tuple: not closed
    clock.now += 3600
    assert table.expire() == 0 and joinable(table)


def test_early_close_is_remembered_for_the_grace_only() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("close"))
    clock.now += 31
    table.expire()
    table.learn(event("connect"))  # a connection the old close does not name
    clock.now += 3600
    assert table.expire() == 0 and joinable(table)


def test_early_close_of_an_unconnected_socket_names_its_local_end() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("close", dst=""))
    table.learn(event("udp", dst=""))
    assert joinable(table)
    clock.now += 31
    assert table.expire() == 1 and not joinable(table)


def test_late_close_expires_before_closes_that_came_after_it() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("close", sport=1))
    clock.now += 20
    table.learn(event("connect", sport=2))
    table.learn(event("close", sport=2))  # due at +50
    table.learn(event("connect", sport=1))  # its close came at +0: due at +30
    clock.now += 11
    assert table.expire() == 1
    assert not joinable(table, 1) and joinable(table, 2)


def test_remembered_closes_are_bounded() -> None:
    clock = Clock()
    table = SocketTable(3, 30, clock=clock)
    for port in range(1, 11):
        table.learn(event("close", sport=port))
    assert len(table._closed_early) == 3
    table.learn(event("connect", sport=1))  # its close was dropped for newer ones
    clock.now += 3600
    assert table.expire() == 0 and joinable(table, 1)
