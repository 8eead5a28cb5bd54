"""The chain works here: bcc compiles a program, attaches a tracepoint, we see an event."""

from __future__ import annotations

import os
import subprocess

BPF_TEXT = r"""
BPF_RINGBUF_OUTPUT(events, 8);

struct event { u32 tgid; char comm[16]; };

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;
    e->tgid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


def test_tracepoint_event_seen() -> None:
    from bcc import BPF

    bpf = BPF(text=BPF_TEXT.encode())
    seen: list[tuple[int, bytes]] = []

    def on_event(_ctx: object, data: int, _size: int) -> None:
        event = bpf[b"events"].event(data)
        seen.append((event.tgid, bytes(event.comm)))

    bpf[b"events"].open_ring_buffer(on_event)
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    for _ in range(50):
        bpf.ring_buffer_poll(100)
        if any(tgid == child.pid for tgid, _ in seen):
            break
    bpf.cleanup()
    assert any(tgid == child.pid and comm.startswith(b"true") for tgid, comm in seen), seen
    assert os.geteuid() == 0
