"""The start-up socket snapshot: /proc/net table parsing, the accept/connect rule, and
owners found through a /proc and cgroup tree laid out as the kernel lays them out.

The table fixtures are lines the kernel (6.18, x86-64) printed for real loopback sockets:
a dual-stack listener on [::] with an IPv6 and an IPv4 (mapped) connection, an IPv4
listener with a connection, connected UDP sockets over IPv4, IPv6 and IPv4-mapped IPv6.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path

import prometheus_client
import pytest
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_snapshotting import (
    TCP,
    UDP,
    Owner,
    SnapshotLimits,
    SocketSnapshot,
    TableEntry,
    cgroups_by_pid,
    parse_address,
    parse_table,
    snapshot_wire,
    socket_inode,
    socket_kinds,
)
from flowscope.collector.socket_tracing import AF_INET, AF_INET6, address_text
from flowscope.core.records import RawSocket
from hypothesis import given
from hypothesis import strategies as st

TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 0100007F:C48B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 787702 1 00000000d0cc766e 100 0 0 10 0                    
 127: 0100007F:AD82 0100007F:8145 01 00000000:00000000 00:00000000 00000000     0        0 787700 2 0000000095e8955d 20 0 0 10 -1                    
 161: 0100007F:D114 0100007F:C48B 01 00000000:00000000 00:00000000 00000000     0        0 787703 2 000000007aedffa9 20 0 0 10 -1                    
 174: 0100007F:C48B 0100007F:D114 01 00000000:00000000 00:00000000 00000000     0        0 787704 1 000000009ade34b4 20 0 0 10 -1                    
"""  # noqa: W291 - the kernel pads tcp lines with spaces
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:8145 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 787697 1 000000003e905010 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:8145 0000000000000000FFFF00000100007F:AD82 01 00000000:00000000 00:00000000 00000000     0        0 787701 1 00000000722b1e06 20 0 0 10 -1
   2: 00000000000000000000000001000000:8A28 00000000000000000000000001000000:8145 01 00000000:00000000 00:00000000 00000000     0        0 787698 2 000000001a2caf7f 20 0 0 10 -1
   4: 00000000000000000000000001000000:8145 00000000000000000000000001000000:8A28 01 00000000:00000000 00:00000000 00000000     0        0 787699 1 00000000ee96b6c6 20 0 0 10 -1
"""
UDP4 = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
15447: 0100007F:91A6 0100007F:14E9 01 00000000:00000000 00:00000000 00000000     0        0 787705 2 0000000070dc21b0 0        
"""  # noqa: W291
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
12774: 00000000000000000000000001000000:8735 00000000000000000000000001000000:14E9 01 00000000:00000000 00:00000000 00000000     0        0 787706 2 00000000b73bce76 0
14515: 0000000000000000FFFF00000100007F:CE02 0000000000000000FFFF00000100007F:14EA 01 00000000:00000000 00:00000000 00000000     0        0 787707 2 0000000046991457 0
 1200: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 787708 2 0000000046991458 0
"""
TABLE_TEXT = {"tcp": TCP4, "tcp6": TCP6, "udp": UDP4, "udp6": UDP6}
FAMILY = {"tcp": (AF_INET, TCP), "tcp6": (AF_INET6, TCP), "udp": (AF_INET, UDP),
          "udp6": (AF_INET6, UDP)}  # fmt: skip
CONTAINER = "ab" * 32
little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="fixtures from x86")


def kernel_address(family: int, raw: bytes, port: int) -> str:
    """What the kernel prints: each 32-bit word of the address (network bytes) as a
    host-order number ``%08X``, then ``:%04X`` of the host-order port."""
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def entries(table: str) -> list[TableEntry]:
    found, errors = parse_table(TABLE_TEXT[table], table, *FAMILY[table])
    assert errors == []
    return found


# ---------------------------------------------------------------- parsing


@little_endian
def test_ipv4_table_from_the_kernel() -> None:
    listener, peer, client, server = entries("tcp")
    assert listener == TableEntry(TCP, "127.0.0.1", 0xC48B, "0.0.0.0", 0, 10, 787702)
    assert (client.local, client.lport, client.remote, client.rport) == (
        "127.0.0.1", 0xD114, "127.0.0.1", 0xC48B)  # fmt: skip
    assert (client.state, client.inode) == (1, 787703)
    assert (server.lport, server.rport, server.inode) == (0xC48B, 0xD114, 787704)
    assert peer.rport == 0x8145  # a client of the IPv6 listener, over IPv4


@little_endian
def test_ipv6_words_are_host_order() -> None:
    # ::1 is printed as 00000000 00000000 00000000 01000000 on a little-endian machine.
    wildcard, mapped, client, server = entries("tcp6")
    assert (wildcard.local, wildcard.lport, wildcard.state) == ("::", 0x8145, 10)
    assert (client.local, client.remote) == ("::1", "::1")
    assert (server.lport, server.rport) == (0x8145, 0x8A28)
    # An IPv4 connection accepted by the dual-stack listener: shown as IPv4, as the
    # BPF hooks and the flow records show it.
    assert (mapped.local, mapped.lport, mapped.remote, mapped.rport) == (
        "127.0.0.1", 0x8145, "127.0.0.1", 0xAD82)  # fmt: skip
    # A global address: 2001:db8::1234:5678 is 20010db8 0 0 12345678 in network order.
    assert parse_address("B80D0120000000000000000078563412:1F90", AF_INET6) == (
        "2001:db8::1234:5678", 8080)  # fmt: skip


@given(st.binary(min_size=16, max_size=16), st.integers(0, 65535))
def test_any_ipv6_address_reads_back(raw: bytes, port: int) -> None:
    text = kernel_address(AF_INET6, raw, port)
    assert parse_address(text, AF_INET6) == (address_text(AF_INET6, raw), port)


@given(st.binary(min_size=4, max_size=4), st.integers(0, 65535))
def test_any_ipv4_address_reads_back(raw: bytes, port: int) -> None:
    text = kernel_address(AF_INET, raw, port)
    assert parse_address(text, AF_INET) == (socket.inet_ntoa(raw), port)


def test_malformed_lines_are_errors_and_skipped() -> None:
    header, good, *_ = TCP4.splitlines()
    bad = [
        good[:60],  # truncated mid-line
        good.replace("0100007F:C48B", "0100007G:C48B"),  # not hex
        good.replace("0100007F:C48B", "100007F:C48B"),  # 7 digits
        good.replace("0100007F:C48B", "0100007FC48B"),  # no port
        good.replace(" 0A ", " A "),  # state not 2 digits
        good.replace(" 787702 ", " inode "),  # inode not a number
    ]
    text = "\n".join([header, bad[0], good, *bad[1:], ""])
    found, errors = parse_table(text, "tcp", AF_INET, TCP)
    assert [e.inode for e in found] == [787702]
    assert [e.number for e in errors] == [2, 4, 5, 6, 7, 8]
    assert {e.reason for e in errors} == {"bad-socket-table-line"}
    assert "tcp line 2: 6 fields" in str(errors[0])


def test_ipv6_address_in_an_ipv4_table_is_an_error() -> None:
    line = TCP6.splitlines()[3]
    _, errors = parse_table(f"header\n{line}\n", "tcp", AF_INET, TCP)
    assert len(errors) == 1 and "address" in str(errors[0])


# ---------------------------------------------------------------- accept / connect


@little_endian
def test_accept_connect_udp_from_the_kernel_tables() -> None:
    every = [e for table in TABLE_TEXT for e in entries(table)]
    kinds = {entry.inode: event for event, entry in socket_kinds(every)}
    assert kinds == {
        787700: "connect",  # 127.0.0.1 → the [::] listener's port
        787703: "connect",  # → the 127.0.0.1 listener
        787704: "accept",  # local end is the 127.0.0.1 listener
        787701: "accept",  # IPv4-mapped, local end the [::] listener's port
        787698: "connect",  # ::1 → [::] listener
        787699: "accept",
        787705: "udp",
        787706: "udp",
        787707: "udp",
    }  # the listeners and the unconnected UDP socket (787708) are not reported


def test_listener_address_must_match_unless_wildcard() -> None:
    def entry(
        local: str, lport: int, remote: str, rport: int, state: int, inode: int
    ) -> TableEntry:
        return TableEntry(TCP, local, lport, remote, rport, state, inode)

    table = [
        entry("10.0.0.1", 80, "0.0.0.0", 0, 10, 1),  # listener on one address
        entry("10.0.0.1", 80, "10.0.0.9", 5000, 1, 2),  # accepted there
        entry("10.0.0.2", 80, "10.0.0.9", 5001, 1, 3),  # same port, other address: client
        entry("10.0.0.2", 443, "0.0.0.0", 0, 10, 4),
        entry("10.0.0.1", 6000, "10.0.0.9", 443, 2, 5),  # SYN_SENT: a client
        entry("10.0.0.1", 6001, "10.0.0.9", 443, 6, 0),  # TIME_WAIT: no socket
        entry("10.0.0.1", 6002, "10.0.0.9", 443, 3, 0),  # SYN_RECV: no socket
        entry("10.0.0.1", 80, "10.0.0.8", 7000, 8, 6),  # CLOSE_WAIT, accepted
        entry("10.0.0.3", 22, "10.0.0.9", 6000, 1, 7),
        entry("::", 22, "::", 0, 10, 8),  # wildcard IPv6 listener covers 10.0.0.3:22
    ]
    kinds = [(event, e.inode) for event, e in socket_kinds(table)]
    assert kinds == [("accept", 2), ("connect", 3), ("connect", 5), ("accept", 6), ("accept", 7)]


def test_socket_inode_of_fd_links() -> None:
    assert socket_inode("socket:[787702]") == 787702
    assert socket_inode("pipe:[787702]") == 0
    assert socket_inode("anon_inode:[eventpoll]") == 0
    assert socket_inode("/dev/null") == 0


def test_snapshot_wire_is_a_raw_socket_record() -> None:
    entry = TableEntry(TCP, "10.0.0.1", 80, "10.0.0.9", 5000, 1, 2)
    wire = snapshot_wire("accept", entry, Owner(7, "nginx", 42, CONTAINER), "node-a", 10**18, 99)
    assert RawSocket.from_wire(wire).to_wire() == wire
    assert list(wire) == [f for f in RawSocket.__dataclass_fields__ if f != "SCHEMA"]
    assert (wire["pid"], wire["tid"], wire["comm"], wire["netns"]) == (7, 0, "nginx", 99)


# ---------------------------------------------------------------- the snapshot over a /proc tree


class FakeHost:
    """A /proc and a cgroup2 tree in a directory, laid out as the kernel lays them out:
    ``<pid>/ns/net`` (hard links, so one namespace is one inode), ``<pid>/net/<table>``,
    ``<pid>/fd/<n>`` symlinks to ``socket:[inode]``, ``<pid>/comm``; cgroup directories
    with ``cgroup.procs``."""

    def __init__(self, root: Path, cap_eff: int = 0x1FFFFFFFFFF) -> None:
        self.proc = root / "proc"
        self.cgroup = root / "cgroup"
        self.namespaces = root / "ns"
        for directory in (self.proc, self.cgroup, self.namespaces):
            directory.mkdir()
        (self.cgroup / "cgroup.procs").write_text("")
        self.status = root / "status"
        self.status.write_text(f"Name:\tflowscope\nCapEff:\t{cap_eff:016x}\n")

    def process(self, pid: int, ns: str, comm: str, sockets: list[int], cgroup: str = "") -> None:
        base = self.proc / str(pid)
        (base / "ns").mkdir(parents=True)
        (base / "fd").mkdir()
        namespace = self.namespaces / ns
        if not namespace.exists():
            namespace.write_text("")
        os.link(namespace, base / "ns" / "net")
        (base / "comm").write_text(comm + "\n")
        os.symlink("/dev/null", base / "fd" / "0")
        os.symlink("pipe:[11]", base / "fd" / "1")
        for n, inode in enumerate(sockets, start=3):
            os.symlink(f"socket:[{inode}]", base / "fd" / str(n))
        procs = self.cgroup / cgroup / "cgroup.procs"
        procs.parent.mkdir(parents=True, exist_ok=True)
        procs.write_text((procs.read_text() if procs.exists() else "") + f"{pid}\n")

    def tables(self, pid: int, **texts: str) -> None:
        (self.proc / str(pid) / "net").mkdir()
        for table in ("tcp", "tcp6", "udp", "udp6"):
            (self.proc / str(pid) / "net" / table).write_text(texts.get(table, "header\n"))

    def snapshot(
        self, limits: SnapshotLimits | None = None
    ) -> tuple[SocketSnapshot, prometheus_client.CollectorRegistry]:
        registry = prometheus_client.CollectorRegistry()
        metrics = SocketSnapshotMetrics.create(registry)
        snapshot = SocketSnapshot(
            "node-a", metrics, limits or SnapshotLimits(), self.proc, str(self.cgroup), self.status
        )
        return snapshot, registry


def metric(registry: prometheus_client.CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@little_endian
def test_snapshot_names_owners_lowest_pid_first(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    scope = f"kubepods.slice/cri-containerd-{CONTAINER}.scope"
    # Namespace "pod": pid 300 serves (its listener and accepted socket), pid 200 is a
    # client; pid 400, a fork of 300, holds the accepted socket too.
    host.process(200, "pod", "client", [787703, 787705])
    host.process(300, "pod", "server", [787702, 787704], cgroup=scope)
    host.process(400, "pod", "worker", [787704])
    host.process(500, "other", "idle", [])
    host.tables(200, tcp=TCP4, udp=UDP4)
    host.tables(300, tcp=TCP4, udp=UDP4)
    host.tables(400, tcp=TCP4, udp=UDP4)
    host.tables(500)
    snapshot, registry = host.snapshot()
    records = {(r["event"], r["sport"]): r for r in snapshot.take()}
    assert set(records) == {("connect", 0xD114), ("accept", 0xC48B), ("udp", 0x91A6)}
    # 787700 (client of a listener in another namespace) has no holder here: skipped.
    accept = records["accept", 0xC48B]
    assert (accept["pid"], accept["comm"], accept["container_id"]) == (300, "server", CONTAINER)
    assert accept["cgroup_id"] == os.stat(host.cgroup / scope).st_ino
    client = records["connect", 0xD114]
    assert (client["pid"], client["comm"], client["dport"]) == (200, "client", 0xC48B)
    assert client["cgroup_id"] == os.stat(host.cgroup).st_ino and client["container_id"] == ""
    assert records["udp", 0x91A6]["pid"] == 200
    assert (
        metric(registry, "flowscope_collector_socket_snapshot_sockets_total", event="accept") == 1
    )
    assert (
        metric(registry, "flowscope_collector_socket_snapshot_skipped_total", reason="no_owner")
        == 1
    )


@little_endian
def test_a_comm_that_is_not_utf8_is_read_as_the_tracer_reads_it(tmp_path: Path) -> None:
    """A task may name itself with any bytes (prctl PR_SET_NAME); the snapshot read
    ``comm`` as UTF-8 text and raised UnicodeDecodeError for the whole snapshot."""
    host = FakeHost(tmp_path)
    host.process(300, "pod", "server", [787702, 787704])
    host.tables(300, tcp=TCP4)
    (host.proc / "300" / "comm").write_bytes(b"srv\xff\xfe\n")
    snapshot, _ = host.snapshot()
    comms = {r["comm"] for r in snapshot.take()}
    assert comms == {b"srv\xff\xfe".decode("utf-8", errors="replace")}


@little_endian
def test_malformed_lines_are_counted_and_the_rest_reported(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.process(200, "pod", "client", [787703])
    lines = TCP4.splitlines()
    host.tables(200, tcp="\n".join([*lines[:3], lines[3][:40], *lines[3:]]) + "\n")
    snapshot, registry = host.snapshot()
    assert [r["sport"] for r in snapshot.take()] == [0xD114]
    errors = "flowscope_collector_socket_snapshot_errors_total"
    assert metric(registry, errors, reason="bad-socket-table-line") == 1


@little_endian
def test_limit_bounds_the_reported_sockets(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.process(200, "pod", "both", [787703, 787704, 787705])
    host.tables(200, tcp=TCP4, udp=UDP4)
    snapshot, registry = host.snapshot(SnapshotLimits(max_sockets=2))
    # The first two in table order are considered: 787700 (no holder) and 787703.
    assert [r["sport"] for r in snapshot.take()] == [0xD114]
    skipped = "flowscope_collector_socket_snapshot_skipped_total"
    assert metric(registry, skipped, reason="limit") == 2  # 787704 and the UDP socket
    assert metric(registry, skipped, reason="no_owner") == 1


def test_cgroups_by_pid_walks_every_cgroup(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    scope = f"system.slice/docker-{CONTAINER}.scope"
    host.process(1, "host", "init", [])
    host.process(70, "pod", "app", [], cgroup=scope)
    found = cgroups_by_pid(str(host.cgroup))
    assert found[1] == (os.stat(host.cgroup).st_ino, "")
    assert found[70] == (os.stat(host.cgroup / scope).st_ino, CONTAINER)


def test_without_cap_sys_ptrace_the_snapshot_is_skipped_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost(tmp_path, cap_eff=0x1FFFFFFFFFF & ~(1 << 19))
    host.process(200, "pod", "client", [787703])
    host.tables(200, tcp=TCP4)
    snapshot, registry = host.snapshot()
    with caplog.at_level(logging.INFO, "flowscope.collector.socket_snapshotting"):
        assert snapshot.take() == []
    assert [r.getMessage() for r in caplog.records if "CAP_SYS_PTRACE" in r.getMessage()]
    assert len(caplog.records) == 1
    assert registry.get_sample_value("flowscope_collector_socket_snapshot_seconds") == 0


def test_unreadable_tables_are_counted_and_the_next_process_used(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.process(200, "pod", "odd", [])  # no net/ tables readable
    host.process(300, "pod", "client", [787703])
    host.tables(300, tcp=TCP4)
    snapshot, registry = host.snapshot()
    assert [r["pid"] for r in snapshot.take()] == [300]
    errors = "flowscope_collector_socket_snapshot_errors_total"
    assert metric(registry, errors, reason="unreadable") == 1


def test_a_passed_deadline_reports_nothing_and_says_so(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.process(200, "pod", "client", [787703])
    host.tables(200, tcp=TCP4)
    snapshot, _ = host.snapshot()
    result = snapshot.collect(deadline=time.monotonic() - 1)
    assert result.records == [] and result.timed_out
    assert result.errors == {"deadline": 1}
