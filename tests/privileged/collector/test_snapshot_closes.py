"""Closes of connections the start-up snapshot reported, in the real kernel.

No hook sees a connection established before the socket programs were attached, so its
close comes from the tracepoint sock:inet_sock_set_state, for the 4-tuples the snapshot
handed to the tracer (bpf/sockets.c, snapshot_closes). Ground truth: the ports the peer
processes report and the moment the test makes them close. Namespaces are named
``fsx2-sc<pid>…`` and deleted after.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer

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
