"""A socket event made by a worker thread names its process, not the thread: the hooks
see the calling thread (``bpf_get_current_comm``), and ``process.executable.name`` is
the process's name (its main thread's, /proc/<pid>/comm). Real tracer, loopback.

Ground truth: the subprocess's pid, /proc/<pid>/comm and the worker's tid as it reports it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import prometheus_client
import pytest
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
from flowscope.core.records import RawSocket

# A process whose worker thread, named like a gRPC executor thread, connects over TCP to
# a listener of the same process and sends one UDP datagram; it prints the ports and the
# worker's tid, then waits for a line on stdin so its /proc entry can be read.
WORKER = """
import ctypes, socket, sys, threading
libc = ctypes.CDLL(None)
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 0))
def worker():
    libc.prctl(15, b"grpc-worker-3", 0, 0, 0)  # PR_SET_NAME: this thread only
    tcp = socket.create_connection(server.getsockname())
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"ping", sink.getsockname())
    print(tcp.getsockname()[1], udp.getsockname()[1], threading.get_native_id(), flush=True)
    tcp.close(); udp.close()
thread = threading.Thread(target=worker); thread.start(); thread.join()
sys.stdin.readline()
"""
# Names its main thread argv[1], says so, waits.
NAMED = """
import ctypes, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def tracer() -> Iterator[SocketTracer]:
    tracer = SocketTracer("test-node", ContainerResolver(), prometheus_client.CollectorRegistry())
    tracer.open()
    yield tracer
    tracer.close()


def test_a_worker_threads_connect_and_udp_name_the_process(tracer: SocketTracer) -> None:
    popen = subprocess.Popen(
        [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert popen.stdout is not None
    tcp_port, udp_port, tid = map(int, popen.stdout.readline().split())
    comm = Path(f"/proc/{popen.pid}/comm").read_text().strip()
    events: list[RawSocket] = []
    wanted = {("connect", tcp_port), ("udp", udp_port)}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not wanted <= {(e.event, e.sport) for e in events}:
        events += tracer.poll(100)
    popen.communicate("done\n", timeout=10)
    ours = [e for e in events if (e.event, e.sport) in wanted]
    assert comm != "grpc-worker-3"
    assert sorted((e.event, e.pid, e.tid, e.comm) for e in ours) == [
        ("connect", popen.pid, tid, comm),
        ("udp", popen.pid, tid, comm),
    ]


def named(name: str) -> subprocess.Popen[str]:
    popen = subprocess.Popen(
        [sys.executable, "-c", NAMED, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None and popen.stdout.readline() == "ready\n"
    return popen


def test_a_reused_pid_is_named_after_its_new_process() -> None:
    """The first process exits, the next one gets its pid (ns_last_pid, root): the
    remembered name is not given to it."""
    from flowscope.collector.socket_tracing import ProcessNames

    names = ProcessNames()
    first = named("first-proc")
    pid = first.pid
    assert names(pid) == b"first-proc"
    first.communicate("done\n", timeout=10)
    for _ in range(20):  # another process on the machine may take the pid first
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        second = named("second-proc")
        if second.pid == pid:
            break
        second.communicate("done\n", timeout=10)
    else:
        pytest.skip(f"pid {pid} could not be reused")
    try:
        names.forget_exited()
        assert names(pid) == b"second-proc"
    finally:
        second.communicate("done\n", timeout=10)
        names.close()
