"""Socket owners in the real kernel: two network namespaces joined by a veth pair, a
server in one and a client in the other, each a separate process whose pid we know.

Ground truth: the subprocesses' pids and /proc/<pid>/comm, the addresses we assign and
the client's local port as it reports it. Over veth, the server side's handshake runs in
softirq on the client's CPU, so a tracer that trusted the current task in that hook would
name the client as the server: these tests would catch it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import PROGRAMS, SocketTracer
from flowscope.core.records import RawSocket

TAG = f"csock{os.getpid()}"
NS_A, NS_B = f"{TAG}a", f"{TAG}b"
V4_A, V4_B = "10.204.7.1", "10.204.7.2"
V6_A, V6_B = "fd00:204::1", "fd00:204::2"

# Both scripts print what the test needs, then wait for a line on stdin before exiting so
# /proc/<pid>/comm can be read while they are alive.
TCP_SERVER = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen()
print('ready', flush=True)
c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
sys.stdin.readline()
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(c.getsockname()[1], flush=True)
c.sendall(b'hello'); c.recv(100); c.close()
sys.stdin.readline()
"""
# Pre-fork: the parent binds and listens, a forked worker accepts.
PREFORK_SERVER = """
import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()
worker = os.fork()
if worker == 0:
    c, _ = s.accept(); c.sendall(c.recv(100)); c.close(); os._exit(0)
print(worker, flush=True)
os.waitpid(worker, 0)
sys.stdin.readline()
"""
# argv[3] == "dstopts": every datagram carries an IPv6 destination options header (a
# PadN option) before UDP, as a sticky socket option (IPV6_DSTOPTS, 59 on Linux).
UDP_OPTIONS = """
import socket, sys
def extension_headers(s):
    if len(sys.argv) > 3 and sys.argv[3] == 'dstopts':
        s.setsockopt(socket.IPPROTO_IPV6, 59, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
"""
UDP_SERVER = (
    UDP_OPTIONS
    + """
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
extension_headers(s)
print('ready', flush=True)
data, peer = s.recvfrom(100); s.sendto(data, peer)
sys.stdin.readline()
"""
)
UDP_CLIENT = (
    UDP_OPTIONS
    + """
addr, port = sys.argv[1], int(sys.argv[2])
c = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
extension_headers(c)
c.sendto(b'ping', (addr, port)); c.recvfrom(100)
print(c.getsockname()[1], flush=True)
sys.stdin.readline()
"""
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    """NS_A and NS_B joined by a veth pair, IPv4 and IPv6 (no DAD), removed afterwards."""
    try:
        for ns in (NS_A, NS_B):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            f"{TAG}x",
            "netns",
            NS_A,
            "type",
            "veth",
            "peer",
            f"{TAG}y",
            "netns",
            NS_B,
        )
        for ns, dev, v4, v6 in ((NS_A, f"{TAG}x", V4_A, V6_A), (NS_B, f"{TAG}y", V4_B, V6_B)):
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        yield
    finally:
        for ns in (NS_A, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def tracer(namespaces: None) -> Iterator[SocketTracer]:
    tracer = SocketTracer("test-node", ContainerResolver(), prometheus_client.CollectorRegistry())
    tracer.open()
    yield tracer
    tracer.close()


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    comm: str

    @property
    def pid(self) -> int:
        return self.popen.pid


def start(ns: str, script: str, *args: str) -> tuple[Proc, str]:
    """Run ``script`` in ``ns``; returns the process and its first output line."""
    popen = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    line = popen.stdout.readline().strip()
    with open(f"/proc/{popen.pid}/comm") as file:  # `ip netns exec` execs: same pid
        comm = file.read().strip()
    return Proc(popen, comm), line


def finish(*procs: Proc) -> None:
    for proc in procs:
        proc.popen.communicate("done\n", timeout=10)


def collect(tracer: SocketTracer, done: Callable[[list[RawSocket]], bool]) -> list[RawSocket]:
    events: list[RawSocket] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not done(events):
        events += tracer.poll(100)
    return events


def tuple_of(e: RawSocket) -> tuple[str, int, str, int]:
    return (e.src, e.sport, e.dst, e.dport)


@pytest.mark.parametrize(("client_addr", "server_addr"), [(V4_A, V4_B), (V6_A, V6_B)])
def test_tcp_connect_and_accept_name_the_right_processes(
    tracer: SocketTracer, client_addr: str, server_addr: str
) -> None:
    port = 8000 + os.getpid() % 1000
    server, ready = start(NS_B, TCP_SERVER, server_addr, str(port))
    assert ready == "ready"
    client, cport_text = start(NS_A, TCP_CLIENT, server_addr, str(port))
    cport = int(cport_text)
    forward = (client_addr, cport, server_addr, port)
    reverse = (server_addr, port, client_addr, cport)

    def seen_all(events: list[RawSocket]) -> bool:
        kinds = {(e.event, tuple_of(e)) for e in events}
        return {("close", forward), ("close", reverse)} <= kinds

    events = collect(tracer, seen_all)
    finish(client, server)
    ours = [e for e in events if tuple_of(e) in (forward, reverse)]
    (connect,) = [e for e in ours if e.event == "connect"]
    (accept,) = [e for e in ours if e.event == "accept"]
    assert (connect.pid, connect.comm, tuple_of(connect), connect.proto) == (
        client.pid, client.comm, forward, 6,
    )  # fmt: skip
    assert connect.tid == client.pid  # single-threaded
    assert (accept.pid, accept.comm, tuple_of(accept), accept.proto) == (
        server.pid, server.comm, reverse, 6,
    )  # fmt: skip
    assert connect.netns and accept.netns and connect.netns != accept.netns
    assert connect.cgroup_id and accept.cgroup_id
    # Every event about this connection names the process on its own end, never another.
    for event in ours:
        expected = client.pid if tuple_of(event) == forward else server.pid
        assert event.pid == expected, event
    assert {e.event for e in ours} == {"connect", "accept", "close"}
    assert abs(connect.time_ns - time.time_ns()) < 60 * 10**9  # unix ns, not boot time


@pytest.mark.parametrize(
    ("client_addr", "server_addr", "extension"),
    [(V4_A, V4_B, ""), (V6_A, V6_B, ""), (V6_A, V6_B, "dstopts")],
)
def test_udp_send_and_receive_name_the_right_processes(
    tracer: SocketTracer, client_addr: str, server_addr: str, extension: str
) -> None:
    port = 9000 + os.getpid() % 1000 + (1 if extension else 0)
    server, ready = start(NS_B, UDP_SERVER, server_addr, str(port), extension)
    assert ready == "ready"
    client, cport_text = start(NS_A, UDP_CLIENT, server_addr, str(port), extension)
    forward = (client_addr, int(cport_text), server_addr, port)
    reverse = (server_addr, port, client_addr, int(cport_text))

    def seen_both(events: list[RawSocket]) -> bool:
        return {forward, reverse} <= {tuple_of(e) for e in events if e.event == "udp"}

    events = collect(tracer, seen_both)
    finish(client, server)
    ours = [e for e in events if tuple_of(e) in (forward, reverse)]
    (sent,) = [e for e in ours if tuple_of(e) == forward]
    (received,) = [e for e in ours if tuple_of(e) == reverse]
    assert (sent.event, sent.pid, sent.comm, sent.proto) == ("udp", client.pid, client.comm, 17)
    assert (received.event, received.pid, received.comm) == ("udp", server.pid, server.comm)
    assert sent.netns and received.netns and sent.netns != received.netns


UDP_SPRAY = """
import socket, sys, time
addr, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.bind((sys.argv[4], 0))
print(c.getsockname()[1], flush=True)
sys.stdin.readline()
for i in range(count):  # one new peer per datagram, spread over ~0.2 s
    c.sendto(b'x', (addr, first + i))
    if i % 20 == 0:
        time.sleep(0.02)
print('sent', flush=True)
sys.stdin.readline()
"""


def read_lines_for(tracer: SocketTracer, seconds: float) -> list[bytes]:
    """What the collector's loop does: non-blocking reads, a pause after each."""
    lines: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines += tracer.read_lines()
        time.sleep(0.05)
    return lines + tracer.read_lines()


def test_read_lines_returns_every_event_once_as_wire_lines(tracer: SocketTracer) -> None:
    """The collector's read: all events that arrive, once each, as raw.socket lines."""
    tracer.read_lines()  # whatever earlier tests left
    first, count = 20000 + os.getpid() % 1000 * 10, 200
    client, sport = start(NS_A, UDP_SPRAY, V4_B, str(first), str(count), V4_A)
    assert client.popen.stdin is not None and client.popen.stdout is not None
    client.popen.stdin.write("go\n")
    client.popen.stdin.flush()
    wires = [orjson.loads(line) for line in read_lines_for(tracer, 1.5)]
    assert client.popen.stdout.readline().strip() == "sent"  # all sent within the period
    finish(client)
    expected = {(V4_A, int(sport), V4_B, first + i) for i in range(count)}
    ours = [RawSocket.from_wire(w) for w in wires if w["pid"] == client.pid]
    assert sorted(tuple_of(e) for e in ours) == sorted(expected)  # each once, none missing
    assert {(e.event, e.comm, e.proto, e.observer) for e in ours} == {
        ("udp", client.comm, 17, "test-node")
    }


def test_prefork_server_accept_names_the_binder_not_another_process(tracer: SocketTracer) -> None:
    """Without the accept hook the server side is the process that bound the port."""
    port = 6000 + os.getpid() % 1000
    parent, worker_text = start(NS_B, PREFORK_SERVER, V4_B, str(port))
    client, cport = start(NS_A, TCP_CLIENT, V4_B, str(port))
    reverse = (V4_B, port, V4_A, int(cport))
    events = collect(tracer, lambda es: any(tuple_of(e) == reverse for e in es))
    finish(client, parent)
    (accept,) = [e for e in events if tuple_of(e) == reverse and e.event == "accept"]
    assert tracer.accept_mode == "listener owner at establishment"
    assert accept.pid == parent.pid and accept.pid != int(worker_text)


def test_listener_older_than_tracer_gives_pid_0_and_close_detaches_everything(
    namespaces: None,
) -> None:
    """A server bound before the tracer started has no known owner: pid 0, not a guess
    (unless the accept hook could be loaded, which names the accepting server). The
    accept hook is asked for, so its fallback is exercised where fexit cannot load.
    After close(), none of the tracer's programs is attached to the cgroup v2 root."""
    from flowscope.collector import cgroup_links
    from flowscope.collector.containers import find_cgroup2_root

    port = 7000 + os.getpid() % 1000
    server, _ = start(NS_B, TCP_SERVER, V4_B, str(port))
    tracer = SocketTracer(
        "test-node", ContainerResolver(), prometheus_client.CollectorRegistry(), accept_hook=True
    )
    tracer.open()
    root_fd = os.open(find_cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:

        def attached_ids() -> set[int]:
            return {
                entry.prog_id
                for p in PROGRAMS
                for entry in cgroup_links.attached(root_fd, p.attach_type)
            }

        assert set(tracer.program_ids) <= attached_ids()
        client, cport = start(NS_A, TCP_CLIENT, V4_B, str(port))
        reverse = (V4_B, port, V4_A, int(cport))
        events = collect(tracer, lambda es: any(tuple_of(e) == reverse for e in es))
        finish(client, server)
        (accept,) = [e for e in events if tuple_of(e) == reverse and e.event == "accept"]
        if tracer.accept_mode == "listener owner at establishment":
            assert (accept.pid, accept.comm, accept.cgroup_id) == (0, "", 0)
        else:
            assert (accept.pid, accept.comm) == (server.pid, server.comm)
        tracer.close()
        assert not set(tracer.program_ids) & attached_ids()
    finally:
        tracer.close()
        os.close(root_fd)


def test_full_ring_buffer_losses_are_counted(namespaces: None) -> None:
    """A one-page ring buffer that nobody reads overflows: the loss shows in the metric."""
    import socket

    registry = prometheus_client.CollectorRegistry()
    tracer = SocketTracer("test-node", ContainerResolver(), registry, ringbuf_pages=1)
    tracer.open()
    try:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        connections = 50
        for _ in range(connections):  # connect, accept and two closes each
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
            client.close()
            accepted.close()
        port = server.getsockname()[1]
        server.close()
        time.sleep(0.2)  # let the TIME_WAIT side's CLOSE callbacks run
        events = tracer.poll(0) + tracer.poll(0)
    finally:
        tracer.close()
    ours = [e for e in events if port in (e.sport, e.dport)]
    lost = registry.get_sample_value("flowscope_collector_socket_events_lost_total")
    assert lost is not None and lost > 0
    assert lost >= 4 * connections - len(ours)


TRACER_PROCESS = """
import sys, time, prometheus_client
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
tracer = SocketTracer("killed", ContainerResolver(), prometheus_client.CollectorRegistry())
tracer.open()
print(" ".join(map(str, tracer.program_ids)), flush=True)
time.sleep(60)
"""


def test_sigkilled_tracer_leaves_nothing_attached(namespaces: None) -> None:
    """BPF links die with their process: SIGKILL, and the root cgroup is clean."""
    from flowscope.collector import cgroup_links
    from flowscope.collector.containers import find_cgroup2_root

    proc = subprocess.Popen(
        [sys.executable, "-c", TRACER_PROCESS], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ids = {int(word) for word in proc.stdout.readline().split()}
    root_fd = os.open(find_cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    try:

        def attached_ids() -> set[int]:
            return {
                entry.prog_id
                for p in PROGRAMS
                for entry in cgroup_links.attached(root_fd, p.attach_type)
            }

        assert len(ids) == len(PROGRAMS) and ids <= attached_ids()
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while ids & attached_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ids & attached_ids()
    finally:
        os.close(root_fd)
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------- UDP close
# A UDP socket that reported a peer is closed with one event naming its local end (as its
# `udp` events did) and its owner; a socket that never reported one sends nothing.

UDP_CLOSE_SERVER = """
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print('ready', flush=True)
data, peer = s.recvfrom(100); s.sendto(data, peer); s.close()
sys.stdin.readline()
"""
# A socket bound but never used, closed first; then one that sends, receives and closes.
# Prints both local ports; the release hook runs in close(), so the first socket's close
# (if it had one) would be in the ring buffer before the second's.
UDP_CLOSE_CLIENT = """
import socket, sys
local, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if ':' in addr else socket.AF_INET
silent = socket.socket(family, socket.SOCK_DGRAM)
silent.bind((local, 0)); silent_port = silent.getsockname()[1]; silent.close()
c = socket.socket(family, socket.SOCK_DGRAM)
c.sendto(b'ping', (addr, port)); c.recvfrom(100)
used_port = c.getsockname()[1]; c.close()
print(silent_port, used_port, flush=True)
sys.stdin.readline()
"""


def local_end(e: RawSocket) -> tuple[str, int]:
    return (e.src, e.sport)


@pytest.mark.parametrize(
    ("client_addr", "server_addr", "unspecified"), [(V4_A, V4_B, "0.0.0.0"), (V6_A, V6_B, "::")]
)
def test_udp_close_names_the_local_end_and_owner_of_a_socket_that_reported(
    tracer: SocketTracer, client_addr: str, server_addr: str, unspecified: str
) -> None:
    tracer.poll(0)  # whatever earlier tests left
    port = 5000 + os.getpid() % 1000 + (1 if ":" in client_addr else 0)
    server, ready = start(NS_B, UDP_CLOSE_SERVER, server_addr, str(port))
    assert ready == "ready"
    client, ports = start(NS_A, UDP_CLOSE_CLIENT, client_addr, server_addr, str(port))
    silent_port, used_port = map(int, ports.split())
    client_end, server_end = (client_addr, used_port), (server_addr, port)

    def both_closed(events: list[RawSocket]) -> bool:
        closed = {local_end(e) for e in events if e.event == "close" and e.proto == 17}
        return {client_end, server_end} <= closed

    events = collect(tracer, both_closed)
    finish(client, server)
    udp = {local_end(e): e for e in events if e.event == "udp" and e.proto == 17}
    for end, owner in ((client_end, client), (server_end, server)):
        (close,) = [e for e in events if e.event == "close" and local_end(e) == end]
        assert (close.proto, close.dst, close.dport) == (17, unspecified, 0)
        assert (close.pid, close.comm, close.tid) == (owner.pid, owner.comm, owner.pid)
        assert close.netns == udp[end].netns and close.netns
        assert close.cgroup_id == udp[end].cgroup_id
        assert close.time_ns >= udp[end].time_ns  # after the socket's last report
    # The bound socket that never reported a peer was closed first: nothing for it.
    assert not [e for e in events if e.sport == silent_port and e.src == client_addr]
