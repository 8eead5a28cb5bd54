"""The start-up socket snapshot in the real kernel: connections opened *before* the
collector starts (so no socket hook ever sees them) are published on raw.sockets with
the processes that hold them.

Ground truth: the pids of the two peer processes, the names they give themselves
(prctl PR_SET_NAME), the ports they report, and each pod namespace's cookie read with
SO_NETNS_COOKIE from inside it. Namespaces are named ``snap<pid>…`` and deleted after.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from flowscope.collector.containers import find_cgroup2_root
from flowscope.collector.socket_tracing import SO_NETNS_COOKIE
from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import CollectorProcess, nats_inside
from tests.privileged.collector.node import Node, Pod, netns
from tests.support import nats_server

NODE = "snapnode"
PORT = 7000 + os.getpid() % 1000

# Both peers name themselves, print what the test needs, then hold their sockets open
# until a line arrives on stdin.
SERVER = """
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"snap-server", 0, 0, 0)
v4, v6, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
listeners = []
for addr, family in ((v4, socket.AF_INET), (v6, socket.AF_INET6)):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(); listeners.append(s)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((v4, port))
print("ready", flush=True)
held = [s.accept()[0] for s in listeners]
print("held", flush=True)
sys.stdin.readline()
"""
ONE_SHOT_SERVER = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
print("ready", flush=True)
s.accept()[0].close()
"""
ONE_SHOT_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(c.getsockname()[1]); c.recv(1)
"""
CLIENT = """
import ctypes, json, socket, sys
ctypes.CDLL(None).prctl(15, b"snap-client", 0, 0, 0)
v4, v6, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
c4 = socket.create_connection((v4, port))
c6 = socket.create_connection((v6, port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.connect((v4, port))
print(json.dumps([c4.getsockname()[1], c6.getsockname()[1], udp.getsockname()[1]]), flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def snap_node() -> Iterator[Node]:
    with Node(tag=f"snap{os.getpid()}").built() as built:
        yield built


@pytest.fixture(scope="module")
def nats_in_snap_node(snap_node: Node) -> Iterator[nats_server.NatsServer]:
    with nats_inside(snap_node) as server:
        yield server


class ClientServer:
    """A client and a server process, each printing lines and closing what it holds
    when a line arrives on its stdin."""

    client: subprocess.Popen[str]
    server: subprocess.Popen[str]

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.communicate("done\n", timeout=10)


class Peers(ClientServer):
    """A server pod process and a client pod process with connections between them."""

    def __init__(self, node: Node) -> None:
        client, server = node.pods[:2]
        self.client_pod, self.server_pod = client, server
        self.server = self._start(server, SERVER, server)
        assert self._line(self.server) == "ready"
        self.client = self._start(client, CLIENT, server)
        self.tcp4_port, self.tcp6_port, self.udp_port = json.loads(self._line(self.client))
        assert self._line(self.server) == "held"

    @staticmethod
    def _start(pod: Pod, script: str, server: Pod) -> subprocess.Popen[str]:
        args = [server.ip4, server.ip6, str(PORT)]
        return subprocess.Popen(
            ["ip", "netns", "exec", pod.ns, sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip


@pytest.fixture
def peers(snap_node: Node) -> Iterator[Peers]:
    opened = Peers(snap_node)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
async def sockets(
    snap_node: Node, nats_in_snap_node: nats_server.NatsServer
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every raw socket record published for NODE, as it arrives."""
    import nats

    with snap_node.inside():
        nc = await nats.connect(nats_in_snap_node.url)
    got: list[dict[str, Any]] = []

    async def handler(msg: Any) -> None:
        got.extend(codec.decode(codec.RAW_SOCKET, msg.headers, msg.data))

    await nc.subscribe(subjects.raw_sockets(NODE), cb=handler)
    yield got
    await nc.close()


def start_collector(
    node: Node, server: nats_server.NatsServer, launcher: list[str]
) -> CollectorProcess:
    with node.inside():
        return CollectorProcess(server.url, node.host, node=NODE, launcher=launcher).start()


def cookie_of(pod: Pod) -> int:
    """The namespace cookie, asked from inside the namespace (what the hooks report)."""
    with netns(pod.ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        return int.from_bytes(
            probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), sys.byteorder
        )


def cgroup_id_of_process(pid: int) -> int:
    path = Path(f"/proc/{pid}/cgroup").read_text().split("0::", 1)[1].splitlines()[0]
    return os.stat(find_cgroup2_root() + path).st_ino


def effective_capabilities(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("CapEff:")[1].split()[0], 16)


def connect_once(client: Pod, server: Pod, port: int) -> int:
    """A short TCP connection from ``client`` to a one-shot server; the client's port."""
    one_shot = subprocess.Popen(
        ["ip", "netns", "exec", server.ns, sys.executable, "-c", ONE_SHOT_SERVER,
         server.ip4, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert one_shot.stdout is not None and one_shot.stdout.readline().strip() == "ready"
    made = subprocess.run(
        ["ip", "netns", "exec", client.ns, sys.executable, "-c", ONE_SHOT_CLIENT,
         server.ip4, str(port)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    one_shot.communicate(timeout=10)
    return int(made.stdout)


def four_tuple(record: dict[str, Any]) -> tuple[int, str, int, str, int]:
    return (record["proto"], record["src"], record["sport"], record["dst"], record["dport"])


async def wait_for(
    records: list[dict[str, Any]], wanted: set[tuple[Any, ...]], within: float = 30
) -> dict[tuple[Any, ...], dict[str, Any]]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = {four_tuple(r): r for r in records if four_tuple(r) in wanted}
        if len(found) == len(wanted):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"missing {wanted - {four_tuple(r) for r in records}}")


async def test_connections_open_before_start_are_reported_with_their_owners(
    snap_node: Node,
    nats_in_snap_node: nats_server.NatsServer,
    peers: Peers,
    sockets: list[dict[str, Any]],
) -> None:
    client, server = peers.client_pod, peers.server_pod
    started = time.time_ns()
    collector = start_collector(snap_node, nats_in_snap_node, [])
    try:
        wanted = {
            (6, client.ip4, peers.tcp4_port, server.ip4, PORT): ("connect", peers.client),
            (6, server.ip4, PORT, client.ip4, peers.tcp4_port): ("accept", peers.server),
            (6, client.ip6, peers.tcp6_port, server.ip6, PORT): ("connect", peers.client),
            (6, server.ip6, PORT, client.ip6, peers.tcp6_port): ("accept", peers.server),
            (17, client.ip4, peers.udp_port, server.ip4, PORT): ("udp", peers.client),
        }
        found = await wait_for(sockets, set(wanted))
        await asyncio.sleep(1.0)  # the snapshot publishes once: nothing more may come
        cookies = {client.ip4: cookie_of(client), server.ip4: cookie_of(server),
                   client.ip6: cookie_of(client), server.ip6: cookie_of(server)}  # fmt: skip
        for key, (event, proc) in wanted.items():
            record = found[key]
            comm = "snap-client" if proc is peers.client else "snap-server"
            assert (record["event"], record["pid"], record["comm"]) == (event, proc.pid, comm)
            assert record["tid"] == 0  # the snapshot's mark: no thread is known
            assert record["netns"] == cookies[record["src"]] != 0
            assert record["cgroup_id"] == cgroup_id_of_process(proc.pid)
            assert started <= record["time_ns"] <= time.time_ns()
            assert sum(four_tuple(r) == key for r in sockets) == 1, key  # reported once
        assert len(set(cookies.values())) == 2
        assert collector.metric("flowscope_collector_socket_snapshot_sockets_total") >= 5
        assert collector.stop() == 0
    finally:
        collector.close()


async def test_without_cap_sys_ptrace_the_snapshot_is_skipped(
    snap_node: Node,
    nats_in_snap_node: nats_server.NatsServer,
    peers: Peers,
    sockets: list[dict[str, Any]],
) -> None:
    # Root without CAP_SYS_PTRACE in its bounding set: gone from the effective set too.
    launcher = ["setpriv", "--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace", "--"]
    collector = start_collector(snap_node, nats_in_snap_node, launcher)
    try:
        assert collector.proc is not None
        assert not effective_capabilities(collector.proc.pid) >> 19 & 1
        line = collector.wait_log("socket snapshot skipped")
        assert "CAP_SYS_PTRACE" in str(line["msg"]) and line.get("level") in ("warning", "WARNING")
        skipped = [e for e in collector.logs() if "CAP_SYS_PTRACE" in str(e.get("msg", ""))]
        assert len(skipped) == 1
        # The collector runs on: a connection made now is reported by the hooks, while
        # the ones that existed before it started are not reported at all.
        client, server = peers.client_pod, peers.server_pod
        fresh = (6, client.ip4, connect_once(client, server, PORT + 1), server.ip4, PORT + 1)
        await wait_for(sockets, {fresh})
        await asyncio.sleep(1.0)
        hooked = [r for r in sockets if four_tuple(r) == fresh and r["event"] == "connect"]
        assert [r["tid"] != 0 for r in hooked] == [True]
        existing = (6, client.ip4, peers.tcp4_port, server.ip4, PORT)
        assert not [r for r in sockets if four_tuple(r) == existing]
        assert collector.metric("flowscope_collector_socket_snapshot_sockets_total") == 0
        assert collector.stop() == 0
    finally:
        collector.close()
