"""UDP sockets' `close` in the real kernel: a socket that reported a peer is closed with
one event naming its local end (as its `udp` events did) and its owner; a socket that
never reported one sends nothing. Two network namespaces joined by a veth pair, a client
and a server process in each, as in test_socket_tracing.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
from flowscope.core.records import RawSocket

TAG = f"fsudp{os.getpid() % 100000}"
NS_A, NS_B = f"{TAG}a", f"{TAG}b"
V4_A, V4_B = "10.205.7.1", "10.205.7.2"
V6_A, V6_B = "fd00:205::1", "fd00:205::2"

SERVER = """
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
CLIENT = """
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


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[None]:
    """NS_A and NS_B joined by a veth pair, IPv4 and IPv6 (no DAD), removed afterwards."""
    try:
        for ns in (NS_A, NS_B):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", f"{TAG}x", "netns", NS_A, "type", "veth",
           "peer", f"{TAG}y", "netns", NS_B)  # fmt: skip
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


def start(ns: str, script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``script`` in ``ns``; returns the process and its first output line."""
    popen = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    return popen, popen.stdout.readline().strip()


def comm_of(popen: subprocess.Popen[str]) -> str:
    with open(f"/proc/{popen.pid}/comm") as file:  # `ip netns exec` execs: same pid
        return file.read().strip()


def collect(tracer: SocketTracer, done: Callable[[list[RawSocket]], bool]) -> list[RawSocket]:
    events: list[RawSocket] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not done(events):
        events += tracer.poll(100)
    return events


def local_end(e: RawSocket) -> tuple[str, int]:
    return (e.src, e.sport)


@pytest.mark.parametrize(
    ("client_addr", "server_addr", "unspecified"), [(V4_A, V4_B, "0.0.0.0"), (V6_A, V6_B, "::")]
)
def test_udp_close_names_the_local_end_and_owner_of_a_socket_that_reported(
    tracer: SocketTracer, client_addr: str, server_addr: str, unspecified: str
) -> None:
    tracer.poll(0)  # whatever earlier tests left
    port = 9500 + os.getpid() % 400 + (1 if ":" in client_addr else 0)
    server, ready = start(NS_B, SERVER, server_addr, str(port))
    assert ready == "ready"
    client, ports = start(NS_A, CLIENT, client_addr, server_addr, str(port))
    silent_port, used_port = map(int, ports.split())
    client_end, server_end = (client_addr, used_port), (server_addr, port)

    def both_closed(events: list[RawSocket]) -> bool:
        closed = {local_end(e) for e in events if e.event == "close" and e.proto == 17}
        return {client_end, server_end} <= closed

    events = collect(tracer, both_closed)
    comms = {client.pid: comm_of(client), server.pid: comm_of(server)}
    for popen in (client, server):
        popen.communicate("done\n", timeout=10)
    udp = {local_end(e): e for e in events if e.event == "udp" and e.proto == 17}
    for end, owner in ((client_end, client.pid), (server_end, server.pid)):
        (close,) = [e for e in events if e.event == "close" and local_end(e) == end]
        assert (close.proto, close.dst, close.dport) == (17, unspecified, 0)
        assert (close.pid, close.comm, close.tid) == (owner, comms[owner], owner)
        assert close.netns == udp[end].netns and close.netns
        assert close.cgroup_id == udp[end].cgroup_id
        assert close.time_ns >= udp[end].time_ns  # after the socket's last report
    # The bound socket that never reported a peer was closed first: nothing for it.
    assert not [e for e in events if e.sport == silent_port and e.src == client_addr]
