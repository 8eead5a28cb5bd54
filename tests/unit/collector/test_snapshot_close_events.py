"""The closes the tracer sends itself for the start-up snapshot's sockets (those found
gone when their entries were written) read as the kernel's would: a TCP connection's
4-tuple, a UDP socket's local end with the remote unspecified (fs_so_release's form)."""

from __future__ import annotations

from typing import Any

import pytest
from flowscope.collector.socket_tracing import decode_event, snapshot_close, socket_wire


def record(proto: int, src: str, dst: str) -> dict[str, Any]:
    return {"proto": proto, "src": src, "sport": 4000, "dst": dst, "dport": 53, "pid": 7,
            "comm": "resolver", "cgroup_id": 9, "netns": 4096}  # fmt: skip


@pytest.mark.parametrize(
    ("proto", "src", "dst", "ends"),
    [
        (6, "10.0.0.1", "10.0.0.2", ("10.0.0.1", 4000, "10.0.0.2", 53)),
        (6, "fd00::1", "fd00::2", ("fd00::1", 4000, "fd00::2", 53)),
        (17, "10.0.0.1", "10.0.0.2", ("10.0.0.1", 4000, "0.0.0.0", 0)),
        (17, "fd00::1", "fd00::2", ("fd00::1", 4000, "::", 0)),
    ],
)
def test_a_snapshot_close_names_what_the_kernel_close_names(
    proto: int, src: str, dst: str, ends: tuple[str, int, str, int]
) -> None:
    event = decode_event(bytes(snapshot_close(record(proto, src, dst), now_ns=5)))
    wire = socket_wire(event, "n1", 100, "")
    assert (wire["src"], wire["sport"], wire["dst"], wire["dport"]) == ends
    assert (wire["event"], wire["proto"], wire["time_ns"]) == ("close", proto, 105)
    assert (wire["pid"], wire["tid"], wire["comm"]) == (7, 0, "resolver")
    assert (wire["cgroup_id"], wire["netns"]) == (9, 4096)
