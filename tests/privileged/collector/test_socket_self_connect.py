"""A TCP socket that connects to its own address and port (a self-connect: a client
whose kernel-chosen local port equals the port it dials, or one bound to that port) in
the real kernel, on the loopback of a network namespace of its own.

The kernel handles it as a simultaneous open: the socket's SYN reaches itself, it goes
SYN_SENT → SYN_RECV → ESTABLISHED, and the sock_ops program is called back as a
*passive* establishment. No listener is involved, so the socket must be reported as
what it is — one `connect` (and its `close`) with its process — and not also as an
`accept`: the enricher keeps the last event for a 5-tuple, so an `accept` after the
`connect` (pid 0 for the kernel-chosen port, whose binder nobody saw) replaced the
owner and turned the direction round.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
from flowscope.core.records import RawSocket

from tests.privileged.collector.test_socket_tracing import ip

NS = f"selfc{os.getpid()}"

# argv: port, "bound" (bind to the port first) or "ephemeral" (the kernel chooses it:
# the namespace's local port range is that one port). Prints the local and peer ports,
# then waits for a line so the pid stays its own while the events are read.
SELF_CONNECT = """
import socket, sys
port, bound = int(sys.argv[1]), sys.argv[2] == 'bound'
s = socket.socket()
if bound:
    s.bind(('127.0.0.1', port))
s.connect(('127.0.0.1', port))
print(s.getsockname()[1], s.getpeername()[1], flush=True)
s.sendall(b'x'); s.recv(1); s.close()
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def tracer() -> Iterator[SocketTracer]:
    """A tracer, and a namespace with loopback up (removed afterwards)."""
    try:
        ip("netns", "add", NS)
        ip("-n", NS, "link", "set", "lo", "up")
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


def self_connect(tracer: SocketTracer, port: int, form: str) -> tuple[int, list[RawSocket]]:
    """Run the self-connect; its pid and the TCP events on its port, up to its close."""
    ip("netns", "exec", NS, "sysctl", "-q", f"net.ipv4.ip_local_port_range={port} {port}")
    popen = subprocess.Popen(
        ["ip", "netns", "exec", NS, sys.executable, "-c", SELF_CONNECT, str(port), form],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    try:
        assert popen.stdout.readline().split() == [str(port), str(port)]  # a self-connect
        events: list[RawSocket] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.event == "close" and e.sport == port for e in events
        ):
            events += tracer.poll(100)
        events += tracer.poll(100)  # anything sent after the close
    finally:
        popen.communicate("done\n", timeout=10)
    return popen.pid, [e for e in events if e.proto == 6 and port in (e.sport, e.dport)]


@pytest.mark.parametrize(("form", "port"), [("ephemeral", 40222), ("bound", 40111)])
def test_self_connect_is_one_connect_and_close_of_its_process(
    tracer: SocketTracer, form: str, port: int
) -> None:
    pid, events = self_connect(tracer, port, form)
    own = ("127.0.0.1", port, "127.0.0.1", port)
    assert [(e.event, e.pid, (e.src, e.sport, e.dst, e.dport)) for e in events] == [
        ("connect", pid, own),
        ("close", pid, own),
    ]
