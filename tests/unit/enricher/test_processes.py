"""Socket table: 5-tuple → process, close + grace expiry, LRU bound."""

from __future__ import annotations

from flowscope.enricher.processes import SocketTable

from tests.unit.enricher.cluster import Clock


def event(kind: str, sport: int = 40000, dst: str = "10.1.0.9", observer: str = "n1") -> dict:
    return {"observer": observer, "event": kind, "proto": 6, "src": "10.1.0.5", "sport": sport,
            "dst": dst, "dport": 80, "pid": 7, "comm": "app", "container_id": "c1"}  # fmt: skip


def test_found_by_full_tuple_on_its_node_only() -> None:
    table = SocketTable(100, 30, clock=Clock())
    table.learn(event("connect"))
    owner = table.find("n1", 6, "10.1.0.5", 40000, "10.1.0.9", 80)
    assert owner is not None and (owner.pid, owner.comm, owner.container_id, owner.event) == (
        7, "app", "c1", "connect")  # fmt: skip
    assert table.find("n2", 6, "10.1.0.5", 40000, "10.1.0.9", 80) is None
    assert table.find("n1", 17, "10.1.0.5", 40000, "10.1.0.9", 80) is None


def test_unconnected_socket_answers_by_local_end() -> None:
    table = SocketTable(100, 30, clock=Clock())
    table.learn(event("udp", sport=53, dst=""))
    assert table.find("n1", 6, "10.1.0.5", 53, "192.0.2.1", 5555) is not None


def test_closed_socket_joinable_for_grace_then_forgotten() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("connect"))
    table.learn(event("close"))
    clock.now += 29
    assert table.expire() == 0
    assert table.find("n1", 6, "10.1.0.5", 40000, "10.1.0.9", 80) is not None
    clock.now += 2
    assert table.expire() == 1
    assert table.find("n1", 6, "10.1.0.5", 40000, "10.1.0.9", 80) is None


def test_reused_tuple_after_close_is_not_expired_by_the_old_close() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("connect"))
    table.learn(event("close"))
    table.learn(event("connect"))  # same port reused by a new connection
    clock.now += 31
    table.expire()
    assert table.find("n1", 6, "10.1.0.5", 40000, "10.1.0.9", 80) is not None


def test_lru_bound_evicts_least_recently_used() -> None:
    table = SocketTable(3, 30, clock=Clock())
    for port in (1, 2, 3):
        table.learn(event("connect", sport=port))
    table.find("n1", 6, "10.1.0.5", 1, "10.1.0.9", 80)  # touch 1: 2 is now the oldest
    table.learn(event("connect", sport=4))
    assert len(table) == 3
    assert table.find("n1", 6, "10.1.0.5", 2, "10.1.0.9", 80) is None
    assert table.find("n1", 6, "10.1.0.5", 1, "10.1.0.9", 80) is not None


def test_a_close_without_its_entry_leaves_the_listener_alone() -> None:
    """A connection's close whose accept was never seen (or was evicted) names no entry:
    the listener answering for the local end stays joinable past the grace."""
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("accept", sport=80, dst=""))  # the listener, keyed by its local end
    table.learn({**event("close", sport=80), "dport": 5555})
    clock.now += 31
    assert table.expire() == 0
    owner = table.find("n1", 6, "10.1.0.5", 80, "10.1.0.99", 4444)
    assert owner is not None and owner.event == "accept" and not owner.closed_at


def test_a_close_with_no_remote_closes_the_local_entry() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(event("udp", sport=53, dst=""))
    table.learn(event("close", sport=53, dst="::"))
    clock.now += 31
    assert table.expire() == 1
    assert table.find("n1", 6, "10.1.0.5", 53, "192.0.2.1", 5555) is None


def test_a_connected_socket_names_what_it_dialled_while_its_entry_is_held() -> None:
    """The local end's last connect answers ``dialled`` until that entry is evicted or
    expires; accept and unconnected events never do; the index holds no more."""
    clock = Clock()
    table = SocketTable(3, 30, clock=clock)
    table.learn(event("connect", dst="10.96.0.10"))
    table.learn(event("accept", sport=8080))
    table.learn(event("udp", sport=53, dst=""))
    found = table.dialled("n1", 6, "10.1.0.5", 40000)
    assert found is not None and found[:2] == ("10.96.0.10", 80) and found[2].pid == 7
    assert table.dialling
    assert table.dialled("n2", 6, "10.1.0.5", 40000) is None
    assert table.dialled("n1", 6, "10.1.0.5", 8080) is None  # accepted, not dialled
    assert table.dialled("n1", 6, "10.1.0.5", 53) is None
    table.learn(event("connect", dst="10.96.0.11"))  # the same port dials elsewhere
    assert table.dialled("n1", 6, "10.1.0.5", 40000)[:2] == ("10.96.0.11", 80)  # type: ignore[index]
    table.learn(event("close", dst="10.96.0.11"))
    clock.now += 31
    assert table.expire() == 1
    assert table.dialled("n1", 6, "10.1.0.5", 40000) is None and not table.dialling
    for port in range(10, 20):  # evictions forget what the evicted entries dialled
        table.learn(event("connect", sport=port, dst="10.96.0.12"))
    assert len(table._dialled) <= 3
    assert table.dialled("n1", 6, "10.1.0.5", 10) is None
    assert table.dialled("n1", 6, "10.1.0.5", 19) is not None
