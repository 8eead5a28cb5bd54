"""Closes of connections the start-up snapshot reported, in the real kernel.

No hook sees a connection established before the socket programs were attached, so its
close comes from the tracepoint sock:inet_sock_set_state, for the 4-tuples the snapshot
handed to the tracer (bpf/sockets.c, snapshot_closes), and a connected UDP socket's from
the release hook, for the cookie the tracer looked up. Ground truth: the ports the peer
processes report and the moment the test makes them close. Namespaces are named
``fsx2-sc<pid>…`` and deleted after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_snapshotting import SocketSnapshot
from flowscope.collector.socket_tracing import SNAPSHOT_MAP, SocketTracer

from tests.privileged.collector.node import Node, Pod
from tests.privileged.collector.test_socket_snapshot import (
    ClientServer,
    connect_once,
    four_tuple,
    nats_in_snap_node,  # noqa: F401 (fixture)
    sockets,  # noqa: F401 (fixture)
    start_collector,
    wait_for,
)
from tests.support import nats_server
from tests.support.waiting import eventually

PORT = 7400 + os.getpid() % 1000

# One connection, held until a line arrives on stdin, then closed by both ends.
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print("ready", flush=True)
c = s.accept()[0]; print("held", flush=True)
sys.stdin.readline(); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(c.getsockname()[1], flush=True)
sys.stdin.readline(); c.close()
"""


# Sockets held open, each closed (reset, for TCP: CLOSE at once) when a line naming its
# local port (argv[3] "local") or its peer's port ("peer") arrives; the process stays.
CLOSING = """
import json, socket, struct, sys
def closing(held, side):
    ports = {(x.getpeername() if side == "peer" else x.getsockname())[1]: x for x in held}
    for line in sys.stdin:
        if not line.strip().isdigit():
            break  # ClientServer.close(): done
        x = ports.pop(int(line))
        x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        x.close()
        print("closed", flush=True)
"""
TWO_SERVER = (
    CLOSING
    + """
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print("ready", flush=True)
held = [s.accept()[0] for _ in range(2)]; print("held", flush=True)
closing(held, sys.argv[3])
"""
)
TWO_TCP_TWO_UDP = (
    CLOSING
    + """
to = (sys.argv[1], int(sys.argv[2]))
held = [socket.create_connection(to) for _ in range(2)]
held += [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
for u in held[2:]: u.connect(to)
print(json.dumps([x.getsockname()[1] for x in held]), flush=True)
closing(held, sys.argv[3])
"""
)


@pytest.fixture(scope="module")
def snap_node() -> Iterator[Node]:
    with Node(tag=f"fsx2-sc{os.getpid()}", ipv6=False).built() as built:
        yield built


class Held(ClientServer):
    """A TCP connection from the first pod to the second, open until :meth:`close`."""

    def __init__(self, node: Node, port: int) -> None:
        self.client_pod, self.server_pod = node.pods[:2]
        self.server = self._start(self.server_pod, SERVER, port)
        assert self._line(self.server) == "ready"
        self.client = self._start(self.client_pod, CLIENT, port)
        client_port = int(self._line(self.client))
        assert self._line(self.server) == "held"
        c, s = self.client_pod.ip4, self.server_pod.ip4
        self.ends = {(6, c, client_port, s, port), (6, s, port, c, client_port)}

    def _start(self, pod: Pod, script: str, port: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", pod.ns, sys.executable, "-c", script,
             self.server_pod.ip4, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip


def closes(records: list[dict[str, Any]], ends: set[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(four_tuple(r) for r in records if r["event"] == "close" and four_tuple(r) in ends)


async def test_a_connection_found_by_the_snapshot_gets_its_close(
    snap_node: Node,
    nats_in_snap_node: nats_server.NatsServer,  # noqa: F811
    sockets: list[dict[str, Any]],  # noqa: F811
) -> None:
    held = Held(snap_node, PORT)
    collector = start_collector(snap_node, nats_in_snap_node, [])
    try:
        found = await wait_for(sockets, held.ends)  # the snapshot's connect and accept
        held.close()
        # A connection made after start-up: the hooks report its close, once per end.
        client, server = snap_node.pods[:2]
        fresh_port = connect_once(client, server, PORT + 1)
        fresh = {(6, client.ip4, fresh_port, server.ip4, PORT + 1),
                 (6, server.ip4, PORT + 1, client.ip4, fresh_port)}  # fmt: skip
        await eventually(lambda: len(closes(sockets, held.ends)) == 2, what="the snapshot's closes")
        await asyncio.sleep(1.0)  # nothing more may come
        assert closes(sockets, held.ends) == sorted(held.ends)
        assert closes(sockets, fresh) == sorted(fresh)
        for record in sockets:
            if record["event"] == "close" and four_tuple(record) in held.ends:
                snapshot = found[four_tuple(record)]  # the owner the snapshot named
                owner = ("pid", "comm", "cgroup_id", "netns")
                assert {k: record[k] for k in owner} == {k: snapshot[k] for k in owner}
        assert collector.stop() == 0
    finally:
        held.close()
        collector.close()


def test_a_connection_the_hooks_saw_too_gets_one_close(snap_node: Node) -> None:
    """The snapshot can report a connection made after the hooks were attached: its
    close comes from the state callback only, not from the tracepoint as well."""
    tracer = SocketTracer(
        "n1", ContainerResolver(), prometheus_client.CollectorRegistry(), snapshot_max=64
    )
    tracer.open()
    try:
        assert tracer.snapshot_closes
        held = Held(snap_node, PORT + 2)
        records = [
            {"proto": 6, "src": src, "sport": sport, "dst": dst, "dport": dport, "pid": 1,
             "comm": "snapshot", "cgroup_id": 0, "netns": 0}
            for _, src, sport, dst, dport in held.ends
        ]  # fmt: skip
        assert tracer.watch_closes(records) == 2
        held.close()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(closes(got, held.ends)) < 2 and time.monotonic() < deadline:
            got += tracer.poll_wire(100)
        got += tracer.poll_wire(500)
        assert closes(got, held.ends) == sorted(held.ends)
        assert all(r["comm"] != "snapshot" for r in got)  # the hooks' closes, not prepared ones
    finally:
        tracer.close()


class Lingering(ClientServer):
    """Two TCP connections and two connected UDP sockets from the first pod to the
    second; each end is closed by :meth:`close_port`, the processes stay (so their
    namespaces can still be entered, as a pod's pause process allows)."""

    def __init__(self, node: Node, port: int) -> None:
        self.client_pod, self.server_pod = node.pods[:2]
        self.port = port
        self.server = self._start(self.server_pod, TWO_SERVER, "peer")
        assert self._line(self.server) == "ready"
        self.client = self._start(self.client_pod, TWO_TCP_TWO_UDP, "local")
        *self.tcp_ports, self.udp_closed_early, self.udp_closed_late = json.loads(
            self._line(self.client)
        )
        assert self._line(self.server) == "held"

    def _start(self, pod: Pod, script: str, side: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", pod.ns, sys.executable, "-c", script,
             self.server_pod.ip4, str(self.port), side],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def tcp_ends(self, client_port: int) -> set[tuple[Any, ...]]:
        c, s = self.client_pod.ip4, self.server_pod.ip4
        return {(6, c, client_port, s, self.port), (6, s, self.port, c, client_port)}

    def udp_close(self, client_port: int) -> tuple[Any, ...]:
        return (17, self.client_pod.ip4, client_port, "0.0.0.0", 0)

    def close_port(self, client_port: int, tcp: bool = True) -> None:
        """Close the client's socket on ``client_port`` (and for TCP the server's end)."""
        for proc in (self.client, self.server) if tcp else (self.client,):
            assert proc.stdin is not None
            proc.stdin.write(f"{client_port}\n")
            proc.stdin.flush()
            assert self._line(proc) == "closed"


def snapshot_of(lingering: Lingering) -> list[dict[str, Any]]:
    """The start-up snapshot's records of ``lingering``'s sockets (the real snapshot)."""
    snapshot = SocketSnapshot(
        "n1", SocketSnapshotMetrics.create(prometheus_client.CollectorRegistry())
    )
    ports = {*lingering.tcp_ports, lingering.udp_closed_early, lingering.udp_closed_late}
    mine = [r for r in snapshot.take() if {r["sport"], r["dport"]} & ports and
            lingering.port in (r["sport"], r["dport"])]  # fmt: skip
    assert len(mine) == 6  # two TCP connections (both ends) and two UDP sockets
    return mine


def events_until(tracer: SocketTracer, done: Any) -> list[dict[str, Any]]:
    """The tracer's events until ``done(events)`` (10 s at most), and half a second more
    (nothing more may come)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while not done(got) and time.monotonic() < deadline:
        got += tracer.poll_wire(100)
    return got + tracer.poll_wire(500)


@contextlib.contextmanager
def lingering_and_tracer(node: Node, port: int) -> Iterator[tuple[Lingering, SocketTracer]]:
    """Sockets opened before the tracer (as before a collector start), and the tracer."""
    lingering = Lingering(node, port)
    tracer = SocketTracer(
        "n1", ContainerResolver(), prometheus_client.CollectorRegistry(), snapshot_max=64
    )
    try:
        tracer.open()
        assert tracer.snapshot_closes
        yield lingering, tracer
    finally:
        lingering.close()
        tracer.close()


def assert_snapshot_owners(got: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Every close of a socket in ``records`` carries the owner the snapshot named."""
    owners = {(r["proto"], r["src"], r["sport"]): r for r in records}
    for record in got:
        snapshot = owners.get((record["proto"], record["src"], record["sport"]))
        if record["event"] == "close" and snapshot is not None:
            owner = ("pid", "netns", "cgroup_id")
            assert {k: record[k] for k in owner} == {k: snapshot[k] for k in owner}


def test_a_udp_socket_found_by_the_snapshot_gets_its_close(snap_node: Node) -> None:
    """A connected UDP socket the snapshot reported gets one close (its local end, the
    remote unspecified, as fs_so_release sends for the hooks' sockets) when it is
    released, with the snapshot's owner; a connection with it gets its own as before."""
    with lingering_and_tracer(snap_node, PORT + 3) as (lingering, tracer):
        records = snapshot_of(lingering)
        watched = tracer.watch_closes(records)
        udp, tcp = lingering.udp_closed_late, lingering.tcp_ports[0]
        ends = lingering.tcp_ends(tcp) | {lingering.udp_close(udp)}
        lingering.close_port(udp, tcp=False)
        lingering.close_port(tcp)
        got = events_until(tracer, lambda got: len(closes(got, ends)) == 3)
        assert closes(got, ends) == sorted(ends)
        assert [r for r in got if r["proto"] == 17 and r["sport"] == udp] == [
            r for r in got if r["event"] == "close" and four_tuple(r) == lingering.udp_close(udp)
        ]  # the close only: no udp event
        assert_snapshot_owners(got, records)
        assert watched == 6


def test_sockets_closed_before_the_map_update_get_their_close(snap_node: Node) -> None:
    """The service's order: the snapshot reads the sockets, then watch_closes writes the
    map. A TCP connection and a UDP socket closed in between had no close anywhere (the
    connection's entry stayed in snapshot_closes); the tracer finds them gone when it
    writes them and sends their closes. The sockets still open are not closed by that,
    and get their closes from the kernel when they end: each once, with the owner the
    snapshot named."""
    with lingering_and_tracer(snap_node, PORT + 4) as (lingering, tracer):
        records = snapshot_of(lingering)
        gone_tcp, open_tcp = lingering.tcp_ports
        lingering.close_port(gone_tcp)
        lingering.close_port(lingering.udp_closed_early, tcp=False)
        watched = tracer.watch_closes(records)
        early = lingering.tcp_ends(gone_tcp) | {lingering.udp_close(lingering.udp_closed_early)}
        got = events_until(tracer, lambda got: len(closes(got, early)) == 3)
        assert closes(got, early) == sorted(early)
        assert closes(got, lingering.tcp_ends(open_tcp)) == []
        assert len(tracer._bpf[SNAPSHOT_MAP].items()) == 2  # the open connection's ends
        assert watched == 5  # the UDP socket closed early is not watched: its close is sent
        late = lingering.tcp_ends(open_tcp) | {lingering.udp_close(lingering.udp_closed_late)}
        lingering.close_port(open_tcp)
        lingering.close_port(lingering.udp_closed_late, tcp=False)
        got += events_until(tracer, lambda got: len(closes(got, late)) == 3)
        assert closes(got, late) == sorted(late)
        assert closes(got, early) == sorted(early)  # once each
        assert len(tracer._bpf[SNAPSHOT_MAP].items()) == 0
        assert_snapshot_owners(got, records)
