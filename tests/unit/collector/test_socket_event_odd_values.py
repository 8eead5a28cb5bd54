"""Socket events with values the kernel's program does not send today are skipped or
published, never a crash of the socket loop: a pid beyond pid_t (a newer or broken
program) in a worker thread's event keeps the thread's name."""

from __future__ import annotations

import orjson
from flowscope.collector.abi import SOCKET_EVENT
from flowscope.collector.socket_tracing import ProcessNames, socket_lines


def event(pid: int, tid: int) -> tuple[object, ...]:
    fields = (1, 2, 0, 3, pid, tid, bytes([127, 0, 0, 1]) + bytes(12),
              bytes([127, 0, 0, 2]) + bytes(12), 40000, 80, 2, 6, 1, 0, b"worker".ljust(16, b"\0"))  # fmt: skip
    return SOCKET_EVENT.unpack(SOCKET_EVENT.pack(*fields))


def test_a_pid_beyond_pid_t_keeps_the_threads_name() -> None:
    names = ProcessNames()
    try:
        events = [event(2**31, 7), event(2**32 - 1, 7)]
        lines, odd = socket_lines(events, "node", 0, lambda ids: {i: "" for i in ids}, names)
    finally:
        names.close()
    assert odd == []
    assert [(r["pid"], r["comm"]) for r in map(orjson.loads, lines)] == [
        (2**31, "worker"),
        (2**32 - 1, "worker"),
    ]
