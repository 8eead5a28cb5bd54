"""UDP sockets' close: the kernel sends one ``close`` per UDP socket that reported a peer,
naming its local end with an unspecified remote. It expires, after the grace, every entry
of that local end — the exact ones its ``udp`` events made and the local-end one — and
nothing else; the index that finds them stays within the table's bound."""

from __future__ import annotations

import pytest
from flowscope.enricher.processes import SocketTable

from tests.unit.enricher.cluster import Clock

LOCAL = ("10.1.0.5", 40000)


def udp(
    dst: str = "10.0.0.53", dport: int = 53, sport: int = 40000, pid: int = 7,
    observer: str = "n1", kind: str = "udp", proto: int = 17,
) -> dict:  # fmt: skip
    return {"observer": observer, "event": kind, "proto": proto, "src": LOCAL[0],
            "sport": sport, "dst": dst, "dport": dport, "pid": pid, "comm": "app",
            "container_id": "c1"}  # fmt: skip


def close(sport: int = 40000, unspecified: str = "0.0.0.0") -> dict:
    return udp(dst=unspecified, dport=0, sport=sport, kind="close")


def owner_pid(
    table: SocketTable, raddr: str, rport: int, sport: int = 40000, observer: str = "n1",
    proto: int = 17,
) -> int | None:  # fmt: skip
    found = table.find(observer, proto, LOCAL[0], sport, raddr, rport)
    return None if found is None else found.pid


@pytest.mark.parametrize("unspecified", ["0.0.0.0", "::", ""])
def test_udp_close_expires_the_exact_entries_and_the_local_entry_after_the_grace(
    unspecified: str,
) -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp())
    table.learn(udp(dst="10.0.0.54"))
    table.learn(udp(dst="", dport=0, pid=8))  # the local end's own entry
    table.learn(udp(sport=40001, pid=9))  # another socket
    table.learn(udp(observer="n2", pid=10))  # the same tuple on another node
    table.learn(udp(kind="connect", proto=6, pid=11))  # TCP on the same local end
    table.learn(close(unspecified=unspecified))
    clock.now += 29
    assert table.expire() == 0
    assert owner_pid(table, "10.0.0.53", 53) == 7 and owner_pid(table, "10.0.0.54", 53) == 7
    assert owner_pid(table, "192.0.2.1", 9) == 8  # the local entry still answers
    clock.now += 2
    assert table.expire() == 3
    assert owner_pid(table, "10.0.0.53", 53) is None
    assert owner_pid(table, "10.0.0.54", 53) is None
    assert owner_pid(table, "192.0.2.1", 9) is None
    assert owner_pid(table, "10.0.0.53", 53, sport=40001) == 9
    assert owner_pid(table, "10.0.0.53", 53, observer="n2") == 10
    assert owner_pid(table, "10.0.0.53", 53, proto=6) == 11


def test_a_new_udp_event_after_the_close_keeps_the_new_owner() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp())
    table.learn(udp(dst="10.0.0.54"))
    table.learn(close())
    table.learn(udp(pid=8))  # a new socket on the reused port, same peer
    table.learn(udp(dst="10.0.0.55", pid=8))  # and a new peer
    clock.now += 31
    assert table.expire() == 1  # the old socket's other peer
    assert owner_pid(table, "10.0.0.53", 53) == 8
    assert owner_pid(table, "10.0.0.55", 53) == 8
    assert owner_pid(table, "10.0.0.54", 53) is None
    clock.now += 3600
    assert table.expire() == 0 and owner_pid(table, "10.0.0.53", 53) == 8


def test_a_second_close_of_the_reused_port_expires_the_new_socket() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp())
    table.learn(close())
    clock.now += 10
    table.learn(udp(pid=8))
    table.learn(close())
    clock.now += 21  # 31 s after the first close, 21 s after the second
    assert table.expire() == 0 and owner_pid(table, "10.0.0.53", 53) == 8
    clock.now += 10
    assert table.expire() == 1 and owner_pid(table, "10.0.0.53", 53) is None


def test_an_early_udp_close_names_only_the_local_entry() -> None:
    """A close with no entry of its local end is remembered for that local end's entry;
    an exact entry learned after it may be a new socket on the reused port: kept."""
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(close())
    table.learn(udp())
    table.learn(udp(dst="", dport=0, pid=8))
    clock.now += 31
    assert table.expire() == 1
    assert owner_pid(table, "10.0.0.53", 53) == 7
    assert owner_pid(table, "192.0.2.1", 9) is None


def test_closing_udp_sockets_do_not_push_out_a_live_connection() -> None:
    clock = Clock()
    table = SocketTable(100, 30, clock=clock)
    table.learn(udp(kind="connect", proto=6, dst="10.2.0.1", dport=443, sport=5000, pid=9))
    for port in range(30000, 30500):  # a DNS client socket per second, two servers each
        table.learn(udp(sport=port))
        table.learn(udp(sport=port, dst="10.0.0.54"))
        table.learn(close(sport=port))
        clock.now += 1
        table.expire()
    assert len(table) <= 2 * 31 + 1  # the sockets within their grace, and the connection
    assert owner_pid(table, "10.2.0.1", 443, sport=5000, proto=6) == 9


def test_the_local_end_index_stays_within_the_table_bound() -> None:
    clock = Clock()
    table = SocketTable(50, 30, clock=clock)
    for port in range(1000):  # never closed: the LRU evicts them
        table.learn(udp(sport=port))
        table.learn(udp(sport=port, dst="10.0.0.54"))
    indexed = [key for keys in table._udp_ends.values() for key in keys]
    assert len(indexed) == len(table._sockets) <= 50
    assert set(indexed) == set(table._sockets)
    for port in range(1000):  # closes for sockets the LRU already forgot
        table.learn(close(sport=port))
    clock.now += 31
    table.expire()
    assert not table._udp_ends and not table._sockets


def test_a_table_of_one_entry_keeps_its_index_with_it() -> None:
    table = SocketTable(1, 30, clock=Clock())
    table.learn(udp(dst="", dport=0))
    table.learn(udp())  # evicts itself: the local entry is not older than it
    table.learn(close())
    assert set(table._sockets) == {key for keys in table._udp_ends.values() for key in keys}
