"""Which listener an accepted connection belongs to, in the real kernel, without the
accept hook (the server side is the binder of the listening address and port).

Several servers share one port in one network namespace: on different addresses, on a
specific address and the wildcard, or on one address with SO_REUSEPORT. Each accepted
connection must name the process that listens where the kernel delivered it, and a
listener must stay known while any socket bound to its address and port remains.
All traffic stays on the loopback of a namespace the module creates.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
from flowscope.core.records import RawSocket

from tests.privileged.collector.test_socket_tracing import ip

NS = f"fb4l{os.getpid()}"
V6_1, V6_2 = "fd00:fb4::1", "fd00:fb4::2"

# A listener driven by stdin: "accept" accepts and echoes one connection, "close" closes
# the listening socket; each answers with a line once done. argv[3] is a comma-separated
# list of options: "reuseport", "v6only0" (an IPv6 socket: dual-stack).
SERVER = """
import socket, sys
addr, port, options = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(',')
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if 'reuseport' in options:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
if 'v6only0' in options and s.family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((addr, port)); s.listen()
print('ready', flush=True)
for line in sys.stdin:
    if line.strip() == 'accept':
        c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
        print('accepted', flush=True)
    elif line.strip() == 'close':
        s.close()
        print('closed', flush=True)
    else:
        break
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print(c.getsockname()[1], flush=True)
c.sendall(b'hello'); c.recv(100); c.close()
"""


@pytest.fixture(scope="module")
def tracer() -> Iterator[SocketTracer]:
    """A namespace with lo up (127.0.0.0/8 and two IPv6 addresses on it) and a tracer."""
    try:
        ip("netns", "add", NS)
        ip("-n", NS, "link", "set", "lo", "up")
        for v6 in (V6_1, V6_2):
            ip("-n", NS, "addr", "add", f"{v6}/128", "dev", "lo", "nodad")
        tracer = SocketTracer(
            "test-node", ContainerResolver(), prometheus_client.CollectorRegistry()
        )
        tracer.open()
        try:
            yield tracer
        finally:
            tracer.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@dataclass
class Server:
    popen: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.popen.pid  # `ip netns exec` execs: same pid

    def ask(self, command: str) -> str:
        """Send one command; returns the server's answer line."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def begin(self, command: str) -> None:
        """Send a command whose answer comes later (read it with :meth:`answer`)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def answer(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline().strip()


def listen(addr: str, port: int, *options: str) -> Server:
    popen = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            NS,
            sys.executable,
            "-c",
            SERVER,
            addr,
            str(port),
            ",".join(options),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    server = Server(popen)
    assert server.answer() == "ready"
    return server


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts; stopped afterwards."""
    started: list[Server] = []
    yield started
    for server in started:
        server.popen.communicate("done\n", timeout=10)


def accepted_by(tracer: SocketTracer, server: Server, addr: str, port: int) -> RawSocket:
    """Connect to (addr, port) while ``server`` accepts; returns the accept event."""
    server.begin("accept")
    client = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-c", CLIENT, addr, str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert server.answer() == "accepted"
    cport = int(client.stdout.strip())

    def ours(e: RawSocket) -> bool:
        return e.event == "accept" and (e.sport, e.dport) == (port, cport)

    events: list[RawSocket] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(map(ours, events)):
        events += tracer.poll(100)
    (accept,) = [e for e in events if ours(e)]
    return accept


def test_tracer_reports_listener_owner_at_establishment(tracer: SocketTracer) -> None:
    assert tracer.accept_mode == "listener owner at establishment"


@pytest.mark.parametrize(
    ("first", "second", "options"),
    [
        ("127.0.0.1", "127.0.0.2", ()),
        (V6_1, V6_2, ()),
        ("127.0.0.1", "0.0.0.0", ("reuseport",)),  # the specific address wins, either order
        ("0.0.0.0", "127.0.0.1", ("reuseport",)),
        ("127.0.0.1", "::", ("reuseport", "v6only0")),  # dual-stack wildcard
    ],
)
def test_servers_on_one_port_at_different_addresses_each_name_their_own_pid(
    tracer: SocketTracer,
    servers: list[Server],
    first: str,
    second: str,
    options: tuple[str, ...],
) -> None:
    port = 30000 + os.getpid() % 1000 * 10
    servers += [listen(first, port, *options), listen(second, port, *options)]
    one, two = servers
    # A wildcard listener is reached through an address no specific listener has.
    other = {"0.0.0.0": "127.0.0.3", "::": "127.0.0.3"}
    first_accept = accepted_by(tracer, one, other.get(first, first), port)
    second_accept = accepted_by(tracer, two, other.get(second, second), port)
    assert (first_accept.pid, second_accept.pid) == (one.pid, two.pid)


@pytest.mark.parametrize("closing", ["later", "earlier"])
@pytest.mark.parametrize("addr", ["127.0.0.1", "0.0.0.0", V6_1])
def test_reuseport_listener_stays_known_after_the_other_binder_closes(
    tracer: SocketTracer, servers: list[Server], closing: str, addr: str
) -> None:
    port = 31000 + os.getpid() % 1000 * 10
    servers += [listen(addr, port, "reuseport"), listen(addr, port, "reuseport")]
    earlier, later = servers
    survivor, closer = (earlier, later) if closing == "later" else (later, earlier)
    assert closer.ask("close") == "closed"
    connect_to = "127.0.0.1" if addr == "0.0.0.0" else addr
    accept = accepted_by(tracer, survivor, connect_to, port)
    assert (accept.pid, accept.comm) != (0, "")
    assert accept.pid == survivor.pid
