"""Real cgroups named as the runtimes name them: the kernel's cgroup id of a process moved
into one resolves to its container (or to none, for a runtime's monitor)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowscope.collector.containers import ContainerResolver, cgroup_id_of, find_cgroup2_root

# Reports tgid and cgroup id of every exec: the child execs after being moved.
BPF_TEXT = r"""
BPF_RINGBUF_OUTPUT(events, 8);
struct event { u32 tgid; u32 pad; u64 cgroup_id; };
TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct event *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return 0;
    e->tgid = bpf_get_current_pid_tgid() >> 32;
    e->pad = 0;
    e->cgroup_id = bpf_get_current_cgroup_id();
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


# (leaf, a sibling or None, whether the leaf is the container) under a test cgroup; {id}
# is the container id.
LAYOUTS = {
    "containerd-systemd": (
        "kubepods.slice/kubepods-podtest.slice/cri-containerd-{id}.scope",
        None,
        True,
    ),
    "crio-cgroupfs": ("kubepods/burstable/podtest/crio-{id}", "crio-conmon-{id}", True),
    "crio-cgroupfs-conmon": ("kubepods/burstable/podtest/crio-conmon-{id}", "crio-{id}", False),
    "podman-cgroupfs": ("libpod_parent/libpod-{id}", "conmon", True),
}


@pytest.fixture(params=sorted(LAYOUTS))
def scope(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str]]:
    """A runtime-named leaf (and its sibling) under a cgroup of this test's own, removed
    afterwards; yields the leaf and the container id the resolver must answer."""
    leaf_path, sibling, is_container = LAYOUTS[request.param]
    container = secrets.token_hex(32)
    top = Path(find_cgroup2_root()) / f"flowscope-csock-{os.getpid()}"
    leaf = top / leaf_path.format(id=container)
    leaf.mkdir(parents=True)
    if sibling:
        (leaf.parent / sibling.format(id=container)).mkdir()
    try:
        yield leaf, container if is_container else ""
    finally:
        for directory in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
            if directory.is_dir():
                directory.rmdir()
        top.rmdir()


def test_kernel_cgroup_id_resolves_to_container(scope: tuple[Path, str]) -> None:
    from bcc import BPF

    leaf, container = scope
    bpf = BPF(text=BPF_TEXT.encode())
    seen: dict[int, int] = {}

    def on_event(_ctx: object, data: int, _size: int) -> None:
        event = bpf[b"events"].event(data)
        seen[event.tgid] = event.cgroup_id

    bpf[b"events"].open_ring_buffer(on_event)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys; sys.stdin.readline(); os.execv('/bin/true', ['true'])",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        (leaf / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.close()
        child.wait(timeout=10)
        for _ in range(50):
            bpf.ring_buffer_poll(100)
            if child.pid in seen:
                break
    finally:
        bpf.cleanup()
    assert seen.get(child.pid) == cgroup_id_of(leaf)
    assert ContainerResolver().container_id(seen[child.pid]) == container
