"""TCP closes when another sock_ops program shares the sockets, in the real kernel.

bpf/sockets.c switches the CLOSE state callback on for the connections it reports, but
the flag is the socket's, not the program's: any other sock_ops program on the cgroup
(a second collector, a CNI) may switch it on for other connections, and every program
then sees their CLOSE. The tracer must still send one `close` per connection it reported
and none for the others, and the start-up snapshot's connections must keep the close
prepared with the snapshot's owner. The test attaches its own minimal sock_ops program,
which enables the state callback on every established socket, to a child cgroup holding
the test's client and server; the tracer is attached to the root as in production.
Namespaces are named ``s36cl<pid>…``, the cgroup ``s36cl<pid>``; all are deleted after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
from flowscope.collector import cgroup_links
from flowscope.collector.containers import ContainerResolver, find_cgroup2_root
from flowscope.collector.socket_tracing import SOCK_OPS, SocketTracer

from tests.privileged.collector.node import Node
from tests.privileged.collector.test_snapshot_closes import closes, events_until
from tests.privileged.collector.test_socket_snapshot import four_tuple

PORT = 8400 + os.getpid() % 1000
BPF_CGROUP_SOCK_OPS = 3

# The other product's program: the state callback on every established connection.
FOREIGN_OPS = """
int foreign_ops(struct bpf_sock_ops *ctx)
{
    if (ctx->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
        ctx->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}
"""

# Accepts connections on argv[1]:argv[2]; each is closed when its peer closes.
SERVER = """
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
def serve(c):
    while c.recv(4096): pass
    c.close()
def accepting():
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
threading.Thread(target=accepting, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""
# Commands on stdin: "open" (a connection to the server, prints its local port),
# "fail" (a refused connection to the next port, prints its local port), "close PORT";
# anything else ends the process.
CLIENT = """
import socket, sys
to, held = (sys.argv[1], int(sys.argv[2])), {}
for line in sys.stdin:
    words = line.split()
    if words == ["open"]:
        c = socket.create_connection(to); held[c.getsockname()[1]] = c
        print(c.getsockname()[1], flush=True)
    elif words == ["fail"]:
        c = socket.socket(); c.bind(("", 0))
        try:
            c.connect((to[0], to[1] + 1))
        except ConnectionRefusedError:
            pass
        print(c.getsockname()[1], flush=True); c.close()
    elif words[:1] == ["close"]:
        held.pop(int(words[1])).close(); print("closed", flush=True)
    else:
        break
"""


@pytest.fixture(scope="module")
def foreign_node() -> Iterator[Node]:
    with Node(tag=f"s36cl{os.getpid()}", ipv6=False).built() as built:
        yield built


@contextlib.contextmanager
def foreign_cgroup() -> Iterator[str]:
    """A child cgroup with the foreign sock_ops program attached (as a link)."""
    from bcc import BPF

    path = os.path.join(find_cgroup2_root(), f"s36cl{os.getpid()}")
    os.mkdir(path)
    bpf = BPF(text=FOREIGN_OPS.encode())
    cgroup = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    link = -1
    try:
        program = bpf.load_func(b"foreign_ops", SOCK_OPS)
        link = cgroup_links.link_create(program.fd, cgroup, BPF_CGROUP_SOCK_OPS)
        yield path
    finally:
        if link >= 0:
            os.close(link)
        os.close(cgroup)
        bpf.cleanup()
        os.rmdir(path)


class Peers:
    """A server and a client process in the foreign cgroup, in two pods."""

    def __init__(self, node: Node, cgroup: str) -> None:
        self.client_pod, self.server_pod = node.pods[:2]
        self.server = self._start(cgroup, self.server_pod.ns, SERVER)
        assert self._line(self.server) == "ready"
        self.client = self._start(cgroup, self.client_pod.ns, CLIENT)

    def _start(self, cgroup: str, ns: str, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup,
             "ip", "netns", "exec", ns, sys.executable, "-c", script,
             self.server_pod.ip4, str(PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.client.stdin is not None
        self.client.stdin.write(command + "\n")
        self.client.stdin.flush()
        return self._line(self.client)

    def ends(self, client_port: int, server_port: int = PORT) -> set[tuple[Any, ...]]:
        c, s = self.client_pod.ip4, self.server_pod.ip4
        return {(6, c, client_port, s, server_port), (6, s, server_port, c, client_port)}

    def close(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.communicate("done\n", timeout=10)


def snapshot_records(ends: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """What the start-up snapshot reports for these connection ends: a made-up owner (pid
    1) the closes must carry."""
    return [
        {"proto": 6, "src": src, "sport": sport, "dst": dst, "dport": dport, "pid": 1,
         "comm": "snapshot", "cgroup_id": 0, "netns": 0}
        for _, src, sport, dst, dport in ends
    ]  # fmt: skip


def test_closes_with_another_sock_ops_program_on_the_sockets(foreign_node: Node) -> None:
    """Connections made before the tracer: the one the snapshot reported is closed with
    the snapshot's owner, the unreported one gets no close. Connections made after it
    (one accepted on a listener bound before it, pid 0, and one refused) get theirs."""
    tracer = SocketTracer(
        "n1", ContainerResolver(), prometheus_client.CollectorRegistry(), snapshot_max=64
    )
    with foreign_cgroup() as cgroup:
        peers = Peers(foreign_node, cgroup)
        try:
            watched_port, unreported_port = int(peers.ask("open")), int(peers.ask("open"))
            watched, unreported = peers.ends(watched_port), peers.ends(unreported_port)
            tracer.open()
            assert tracer.snapshot_closes
            assert tracer.watch_closes(snapshot_records(watched)) == 2
            fresh_port = int(peers.ask("open"))
            fresh = peers.ends(fresh_port)
            refused_port = int(peers.ask("fail"))
            refused = (6, peers.client_pod.ip4, refused_port, peers.server_pod.ip4, PORT + 1)
            for port in (watched_port, unreported_port, fresh_port):
                assert peers.ask(f"close {port}") == "closed"
            wanted = watched | fresh | {refused}
            got = events_until(tracer, lambda got: len(closes(got, wanted)) == 5)
        finally:
            peers.close()
            tracer.close()
    assert closes(got, wanted | unreported) == sorted(wanted)  # each once, no others
    for record in got:
        if record["event"] == "close" and four_tuple(record) in watched:
            assert (record["pid"], record["tid"]) == (1, 0)  # the snapshot's owner
    client_pid = {r["pid"] for r in got if r["event"] == "connect" and four_tuple(r) in fresh}
    assert client_pid and 0 not in client_pid
    pids = {four_tuple(r): r["pid"] for r in got if r["event"] == "close"}
    client, server = peers.client_pod.ip4, peers.server_pod.ip4
    assert pids[6, client, fresh_port, server, PORT] == client_pid.pop()
    assert pids[refused] == pids[6, client, fresh_port, server, PORT]
    assert pids[6, server, PORT, client, fresh_port] == 0  # listener bound before the tracer
