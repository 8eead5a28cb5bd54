"""Python mirrors of the structs in bpf/flowscope_abi.h, declared once.

Each mirror is checked against the layout bcc derives from the compiled program at
start-up, and pinned by a golden-bytes unit test.
"""

from __future__ import annotations

import ctypes

# ---- socket owners (collector-sockets) ----

SOCK_CONNECT = 1
SOCK_ACCEPT = 2
SOCK_UDP = 3
SOCK_CLOSE = 4
SOCKET_EVENT_NAMES = {SOCK_CONNECT: "connect", SOCK_ACCEPT: "accept", SOCK_UDP: "udp", SOCK_CLOSE: "close"}  # fmt: skip


class SocketEvent(ctypes.Structure):
    """``struct fs_socket_event``: one socket-owner event from the ring buffer."""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("cookie", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("netns", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("event", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("comm", ctypes.c_char * 16),
    ]
