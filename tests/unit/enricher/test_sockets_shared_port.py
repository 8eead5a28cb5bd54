"""A UDP local end shared by several sockets (``SO_REUSEPORT``: a server's workers): one
socket's close expires that socket's entries, not a live worker's, which the collector
reports once per peer and so would never name again."""

from __future__ import annotations

from flowscope.enricher.processes import SocketTable

from tests.unit.enricher.cluster import Clock

LOCAL = ("10.1.0.53", 53)


def udp(peer: str, pid: int, kind: str = "udp") -> dict:
    dst, dport = ("0.0.0.0", 0) if kind == "close" else (peer, 40000)
    return {"observer": "n1", "event": kind, "proto": 17, "src": LOCAL[0], "sport": LOCAL[1],
            "dst": dst, "dport": dport, "pid": pid, "comm": f"w{pid}", "container_id": "c1"}  # fmt: skip


def owner_pid(table: SocketTable, peer: str) -> int | None:
    found = table.find("n1", 17, LOCAL[0], LOCAL[1], peer, 40000)
    return None if found is None else found.pid


def test_a_workers_close_leaves_another_workers_peers_joinable() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp("10.2.0.1", 100))  # worker A's peers
    table.learn(udp("10.2.0.3", 100))
    table.learn(udp("10.2.0.4", 0))  # a peer reported before its socket's owner was
    table.learn(udp("10.2.0.2", 200))  # worker B's, on the same local end
    table.learn(udp("", 100, kind="close"))  # worker A's socket released
    clock.now += 31
    assert table.expire() == 3
    assert owner_pid(table, "10.2.0.1") is None and owner_pid(table, "10.2.0.3") is None
    assert owner_pid(table, "10.2.0.4") is None
    assert owner_pid(table, "10.2.0.2") == 200
    table.learn(udp("", 200, kind="close"))  # and then worker B's
    clock.now += 31
    assert table.expire() == 1 and owner_pid(table, "10.2.0.2") is None


def test_a_close_whose_owner_no_entry_names_expires_the_local_end() -> None:
    """The owner at the close is not the one the socket's events named (pid 0: unknown):
    its entries cannot be told from the others', so all of them go."""
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp("10.2.0.1", 100))
    table.learn(udp("10.2.0.2", 200))
    table.learn(udp("", 0, kind="close"))
    clock.now += 31
    assert table.expire() == 2
    assert owner_pid(table, "10.2.0.1") is None and owner_pid(table, "10.2.0.2") is None
