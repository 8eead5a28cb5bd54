"""The dialled index with a bound of one entry: a connect its own learning evicts."""

from __future__ import annotations

from flowscope.enricher.processes import SocketTable

from tests.unit.enricher.cluster import Clock


def event(kind: str, sport: int, dst: str) -> dict:
    return {"observer": "n1", "event": kind, "proto": 6, "src": "10.1.0.5", "sport": sport,
            "dst": dst, "dport": 80 if dst else 0, "pid": 7, "comm": "app", "container_id": "c1"}  # fmt: skip


def test_a_connect_evicted_by_its_own_learning_is_not_indexed_as_dialled() -> None:
    """With ``join.socket_max_entries`` 1 and a listener held, each connect is evicted
    as it is learned (the larger side gives up its oldest entry): the index must not
    keep it (it grew by one key per connect, and kept ``dialling`` on for good)."""
    table = SocketTable(1, 30, clock=Clock())
    table.learn(event("accept", 8080, ""))
    for port in range(40000, 40100):
        table.learn(event("connect", port, "10.96.0.10"))
    assert len(table) == 1
    assert table.find("n1", 6, "10.1.0.5", 8080, "10.1.0.9", 5555) is not None
    assert not table.dialling
    assert len(table._dialled) == 0
    assert table.dialled("n1", 6, "10.1.0.5", 40099) is None


def test_a_connect_held_with_a_bound_of_one_is_indexed() -> None:
    table = SocketTable(1, 30, clock=Clock())
    table.learn(event("connect", 40000, "10.96.0.10"))
    found = table.dialled("n1", 6, "10.1.0.5", 40000)
    assert found is not None and found[:2] == ("10.96.0.10", 80)
