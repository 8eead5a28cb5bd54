"""The start-up snapshot reads each network namespace through one of its processes. That
process may exit, or its pid go to a process of another namespace, between the listing
of the namespaces and the reading: the namespace's connections must still be reported,
with its own cookie.

The race is driven through the snapshot's ``proc`` seam: a /proc laid out by the test
whose entries lead to real processes, where the ``net/tcp`` table of a process listed
earlier is a FIFO, so that the test acts while the snapshot is reading it. Ground truth:
the holder's pid and client port, and the cookie asked from inside the namespace. The
namespaces are unnamed (``unshare --net``) and go with their processes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_snapshotting import SocketSnapshot

# Holds a connection over the namespace's loopback and prints its client port.
HOLD = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a = s.accept()[0]
print(c.getsockname()[1], flush=True); sys.stdin.readline()
"""
COOKIE = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), sys.byteorder))
"""
OTHER_TABLES = ("tcp6", "udp", "udp6")


@dataclass
class Namespaces:
    """Namespace A: ``sleeper`` (the process the snapshot reads first) and ``holder``
    (holding a connection from ``port``); namespace B: ``other``."""

    sleeper: subprocess.Popen[str]
    holder: subprocess.Popen[str]
    port: int
    cookie: int
    other: subprocess.Popen[str]


def enter(pid: int, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def own_namespace() -> subprocess.Popen[str]:
    """A process alone in a new network namespace, its loopback up."""
    script = "ip link set lo up && echo up && exec sleep 600"
    process = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "up\n"
    return process


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    started: list[subprocess.Popen[str]] = []
    try:
        sleeper = own_namespace()
        started.append(sleeper)
        holder = enter(sleeper.pid, sys.executable, "-c", HOLD)
        started.append(holder)
        assert holder.stdout is not None
        port = int(holder.stdout.readline())
        cookie = int(subprocess.check_output(
            ["nsenter", f"--net=/proc/{sleeper.pid}/ns/net", sys.executable, "-c", COOKIE]
        ))  # fmt: skip
        started.append(other := own_namespace())
        yield Namespaces(sleeper, holder, port, cookie, other)
    finally:
        for process in started:
            process.kill()
            process.wait()


def process_dir(directory: Path, namespace: str | None) -> Path:
    """A /proc/<pid> directory whose ``ns`` leads to ``namespace`` (None: an ``ns/net``
    file of its own) and whose ``net/tcp`` is a FIFO; returns the FIFO."""
    (directory / "net").mkdir(parents=True)
    if namespace is None:
        (directory / "ns").mkdir()
        (directory / "ns" / "net").write_text("")
    else:
        os.symlink(namespace, directory / "ns")
    for table in OTHER_TABLES:
        (directory / "net" / table).write_text("header\n")
    os.mkfifo(directory / "net" / "tcp")
    return directory / "net" / "tcp"


def snapshot_while_reading(
    proc: Path, fifo: Path, act: Callable[[], None], text: str
) -> list[dict[str, Any]]:
    """The snapshot of ``proc``; once it opens ``fifo``, ``act()``, then ``text`` is what
    it reads there."""
    problems: list[BaseException] = []

    def writer() -> None:
        for _ in range(1000):  # until the snapshot opens the FIFO, 10 s at most
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                time.sleep(0.01)
        else:
            problems.append(AssertionError("the snapshot never read the FIFO"))
            return
        try:
            act()
            os.write(fd, text.encode())
        except BaseException as error:
            problems.append(error)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    metrics = SocketSnapshotMetrics.create(prometheus_client.CollectorRegistry())
    try:
        records = SocketSnapshot("node", metrics, proc=proc).take()
    finally:
        thread.join()
    assert not problems
    return records


def connection(records: list[dict[str, Any]], ns: Namespaces) -> set[tuple[str, int, int]]:
    """(event, pid, netns) of the records of the holder's connection."""
    ends = [r for r in records if ns.port in (r["sport"], r["dport"])]
    return {(r["event"], r["pid"], r["netns"]) for r in ends}


def test_the_cookie_is_the_namespaces_when_the_process_read_exits(
    tmp_path: Path, namespaces: Namespaces
) -> None:
    """The cookie was read through the first process of the namespace after its tables:
    exited by then, so the connections were published with netns 0."""
    ns = namespaces
    proc = tmp_path / "proc"
    fifo = process_dir(proc / "2", f"/proc/{ns.sleeper.pid}/ns")
    os.symlink(f"/proc/{ns.holder.pid}", proc / str(ns.holder.pid))
    tables = Path(f"/proc/{ns.holder.pid}/net/tcp").read_text()

    def sleeper_exits() -> None:
        ns.sleeper.kill()
        ns.sleeper.wait()

    records = snapshot_while_reading(proc, fifo, sleeper_exits, tables)
    holder = ns.holder.pid
    assert ns.cookie != 0
    assert connection(records, ns) == {
        ("connect", holder, ns.cookie),
        ("accept", holder, ns.cookie),
    }


def test_a_pid_reused_by_another_namespace_does_not_hide_the_namespace(
    tmp_path: Path, namespaces: Namespaces
) -> None:
    """The first process of namespace A exits and its pid goes to a process of namespace
    B before A is read: B's tables were read for A, and A's connection was left out."""
    ns = namespaces
    proc = tmp_path / "proc"
    fifo = process_dir(proc / "1", None)  # listed first, in a namespace of its own
    os.symlink(f"/proc/{ns.sleeper.pid}", proc / "2")
    os.symlink(f"/proc/{ns.holder.pid}", proc / str(ns.holder.pid))

    def pid_reused() -> None:  # pid 2 is now a process of namespace B
        os.symlink(f"/proc/{ns.other.pid}", proc / "new")
        os.replace(proc / "new", proc / "2")

    records = snapshot_while_reading(proc, fifo, pid_reused, "header\n")
    holder = ns.holder.pid
    assert connection(records, ns) == {
        ("connect", holder, ns.cookie),
        ("accept", holder, ns.cookie),
    }
