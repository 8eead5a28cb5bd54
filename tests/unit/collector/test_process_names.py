"""Worker threads' socket events carry their process's name (``ProcessNames``): read
from /proc once per process, forgotten when the process exits, the thread's name kept
where /proc cannot tell. Real processes, no BPF."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from flowscope.collector.socket_tracing import (
    ProcessNames,
    decode_event,
    socket_lines,
    socket_wire,
)

# The process names its main thread argv[1] and a worker thread argv[2], prints the
# worker's tid, then waits for a line on stdin.
NAMED = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
def worker():
    libc.prctl(15, sys.argv[2].encode(), 0, 0, 0)
    print(threading.get_native_id(), flush=True)
    sys.stdin.readline()
thread = threading.Thread(target=worker); thread.start(); thread.join()
"""
LAYOUT = struct.Struct("<QQQQII16s16sHHBBBB16s")  # struct fs_socket_event (x86-64, arm64)


class Named:
    """A running process with a named main thread and a differently named worker."""

    def __init__(self, name: str, worker: str = "grpc-worker-3") -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", NAMED, name, worker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        self.tid = int(self.popen.stdout.readline())
        self.pid = self.popen.pid

    def stop(self) -> None:
        self.popen.communicate("done\n", timeout=10)


@pytest.fixture
def named() -> Iterator[Named]:
    process = Named("main-proc")
    yield process
    process.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def event(pid: int, tid: int, comm: bytes) -> tuple[object, ...]:
    fields = (1, 2, 0, 3, pid, tid, bytes([127, 0, 0, 1]) + bytes(12),
              bytes([127, 0, 0, 2]) + bytes(12), 40000, 80, 2, 6, 1, 0, comm.ljust(16, b"\0"))  # fmt: skip
    return decode_event(LAYOUT.pack(*fields))


def test_a_worker_threads_process_is_named_by_its_main_thread(named: Named) -> None:
    names = ProcessNames()
    assert Path(f"/proc/{named.pid}/task/{named.tid}/comm").read_text() == "grpc-worker-3\n"
    assert names(named.pid) == b"main-proc"
    names.close()


def test_socket_lines_name_the_process_of_a_worker_threads_event(named: Named) -> None:
    """Only events whose thread is not the main one take the process's name; the
    lines stay byte for byte socket_wire's with that name."""
    names = ProcessNames()
    events = [
        event(named.pid, named.tid, b"grpc-worker-3"),  # a worker thread
        event(named.pid, named.pid, b"renamed-main"),  # the main thread: its own comm
        event(0, 0, b""),  # owner unknown
    ]
    lines, odd = socket_lines(events, "node", 0, lambda ids: {i: "" for i in ids}, names)
    names.close()
    assert odd == []
    assert [orjson.loads(line)["comm"] for line in lines] == ["main-proc", "renamed-main", ""]
    assert lines[0] == orjson.dumps(socket_wire(events[0], "node", 0, "", b"main-proc")) + b"\n"
    assert lines[1:] == [orjson.dumps(socket_wire(e, "node", 0, "")) + b"\n" for e in events[1:]]


def test_an_exited_process_is_forgotten_and_its_threads_name_kept() -> None:
    """A remembered name goes with its process; an event of a process that is gone
    keeps its thread's name (nothing raises)."""
    process = Named("short-lived")
    names = ProcessNames()
    assert names(process.pid) == b"short-lived"
    process.stop()  # exited and reaped: its pid is free for the next process
    names.forget_exited()
    assert names(process.pid) is None
    (line,), _ = socket_lines(
        [event(process.pid, process.tid, b"grpc-worker-3")], "n", 0, lambda ids: {}, names
    )
    assert orjson.loads(line)["comm"] == "grpc-worker-3"
    names.close()


def test_an_unreadable_proc_entry_gives_no_name_and_leaks_no_fd(
    named: Named, tmp_path: Path
) -> None:
    """A /proc without the process's entry (hidepid, say) — the thread's name stays."""
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "self" / "ns" / "pid").symlink_to("/proc/self/ns/pid")
    before = open_fds()
    names = ProcessNames(proc=tmp_path)
    assert names.enabled
    assert names(named.pid) is None
    assert open_fds() == before
    (line,), _ = socket_lines(
        [event(named.pid, named.tid, b"grpc-worker-3")], "n", 0, lambda ids: {}, names
    )
    assert orjson.loads(line)["comm"] == "grpc-worker-3"


def test_outside_the_initial_pid_namespace_nothing_is_looked_up(
    named: Named, tmp_path: Path
) -> None:
    """Events carry the initial namespace's pids: a /proc of another one (or none) could
    name a different process, so none is named."""
    names = ProcessNames(proc=tmp_path)
    assert not names.enabled
    assert names(named.pid) is None


def test_at_most_size_processes_are_remembered() -> None:
    processes = [Named(f"proc-{i}") for i in range(3)]
    try:
        before = open_fds()
        names = ProcessNames(size=2)
        assert [names(p.pid) for p in processes] == [b"proc-0", b"proc-1", b"proc-2"]
        assert open_fds() - before == 2 + 1  # two pidfds and the epoll fd
        assert names(processes[0].pid) == b"proc-0"  # read again: it had been dropped
        names.close()
        assert open_fds() == before
    finally:
        for process in processes:
            process.stop()
