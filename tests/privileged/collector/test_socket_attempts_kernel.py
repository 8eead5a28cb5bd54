"""Socket owners in the real kernel, for what establishment alone does not show: TCP
connection attempts that never establish, and sockets used by a program after exec().

Reuses test_socket_tracing's namespaces (a client namespace and a server namespace over
veth) and tracer. Ground truth: the client's pid, its local port as it reports it, and
the name exec() gave it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flowscope.collector.socket_tracing import SocketTracer

from tests.privileged.collector import test_socket_tracing as shared
from tests.privileged.collector.test_socket_tracing import (
    NS_A,
    NS_B,
    TCP_SERVER,
    V4_A,
    V4_B,
    collect,
    finish,
    start,
    tuple_of,
)

# The shared module-scoped fixtures, as this module's own (one namespace pair for it).
namespaces = shared.namespaces
tracer = shared.tracer

# Two attempts from one process: argv[2] has no listener (refused: RST), argv[3] is
# dropped by the server namespace's firewall (the SYN is never answered: timeout).
ATTEMPTS = """
import socket, sys
out = []
for port in (int(sys.argv[2]), int(sys.argv[3])):
    c = socket.socket(); c.settimeout(1.0)
    try:
        c.connect((sys.argv[1], port))
    except OSError as e:
        out.append(f'{c.getsockname()[1]}:{port}:{type(e).__name__}')
    c.close()
print(' '.join(out), flush=True)
sys.stdin.readline()
"""
# socket() before exec(): fd 3 TCP, fd 4 UDP; the exec()ed program (argv[3]) connects
# the TCP one and sends on the UDP one, then prints both local ports.
LAUNCHER = """
import os, socket, sys
t = socket.socket(); u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
os.dup2(t.fileno(), 3); os.dup2(u.fileno(), 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)  # dup2 onto itself: no-op
os.execv(sys.argv[3], [sys.argv[3], '-c', '''
import socket, sys
c = socket.socket(fileno=3); c.connect((sys.argv[1], int(sys.argv[2])))
c.sendall(b'hello'); c.recv(100)
u = socket.socket(fileno=4); u.sendto(b'x', (sys.argv[1], 9))
print(c.getsockname()[1], u.getsockname()[1], flush=True)
c.close()
sys.stdin.readline()
''', sys.argv[1], sys.argv[2]])
"""
FIREWALL = "fsdropsyn"


def test_failed_connection_attempts_name_their_process(tracer: SocketTracer) -> None:
    """A refused and an unanswered connect() each get a `connect` (sent with the SYN)
    and a `close`, both naming the client: their flows can be attributed."""
    refused, dropped = 7700 + os.getpid() % 100, 7800 + os.getpid() % 100
    subprocess.run(
        ["ip", "netns", "exec", NS_B, "nft",
         f"add table inet {FIREWALL}; add chain inet {FIREWALL} in "
         f"{{ type filter hook input priority 0; }}; "
         f"add rule inet {FIREWALL} in tcp dport {dropped} drop"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        client, line = start(NS_A, ATTEMPTS, V4_B, str(refused), str(dropped))
        attempts = {}
        for attempt in line.split():
            lport, dport, error = attempt.split(":")
            attempts[(V4_A, int(lport), V4_B, int(dport))] = error
        assert sorted(attempts.values()) == ["ConnectionRefusedError", "TimeoutError"]

        def seen_all(events: list) -> bool:
            return {("close", t) for t in attempts} <= {(e.event, tuple_of(e)) for e in events}

        events = collect(tracer, seen_all)
        finish(client)
    finally:
        subprocess.run(
            ["ip", "netns", "exec", NS_B, "nft", f"delete table inet {FIREWALL}"],
            capture_output=True,
        )
    for attempt in attempts:
        ours = [e for e in events if tuple_of(e) == attempt]
        assert [e.event for e in ours] == ["connect", "close"], (attempt, ours)
        for event in ours:
            assert (event.pid, event.comm, event.proto) == (client.pid, client.comm, 6)


def test_sockets_used_after_exec_carry_the_new_program_name(
    tracer: SocketTracer, tmp_path: Path
) -> None:
    """exec() keeps pid and tid but renames the task: a TCP connect and a UDP send made
    after it, on sockets created before it, are reported with the new name."""
    port = 7900 + os.getpid() % 100
    program = tmp_path / "billing-agent"  # comm is the exec()ed path's last component
    program.symlink_to(os.path.realpath(sys.executable))
    server, ready = start(NS_B, TCP_SERVER, V4_B, str(port))
    assert ready == "ready"
    client, line = start(NS_A, LAUNCHER, V4_B, str(port), str(program))
    tcp_port, udp_port = map(int, line.split())
    tcp = (V4_A, tcp_port, V4_B, port)
    udp = (V4_A, udp_port, V4_B, 9)

    def seen_all(events: list) -> bool:
        kinds = {(e.event, tuple_of(e)) for e in events}
        return {("connect", tcp), ("udp", udp)} <= kinds

    events = collect(tracer, seen_all)
    finish(client, server)
    assert client.comm == "billing-agent"
    (connect,) = [e for e in events if e.event == "connect" and tuple_of(e) == tcp]
    (sent,) = [e for e in events if e.event == "udp" and tuple_of(e) == udp]
    for event in (connect, sent):
        assert (event.pid, event.comm) == (client.pid, "billing-agent"), event
