"""ctypes mirror of bpf/flowscope_abi.h — every struct crossing the kernel boundary, once.

At start-up :func:`check_layout` compares each mirror with the layout bcc derived from
the compiled program (its table ``Key``/``Leaf`` types and the ring buffer's event
type); a difference in size or in any field's offset or size is a
:class:`~flowscope.core.errors.StartupError`. tests/unit/collector/test_flow_abi.py pins
the layout with golden bytes.
"""

from __future__ import annotations

import ctypes
import ctypes as ct
import struct
from functools import cache
from typing import Any

from flowscope.core.errors import StartupError

ABI_VERSION = 3

AF_INET = 4
AF_INET6 = 6
DIR_LO_HI = 0
DIR_HI_LO = 1


class FlowKey(ct.Structure):
    """``struct flow_key``: a flow, direction-free (canonical endpoint order)."""

    _fields_ = [
        ("addr_lo", ct.c_uint8 * 16),
        ("addr_hi", ct.c_uint8 * 16),
        ("port_lo", ct.c_uint16),
        ("port_hi", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("family", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    ]


class FlowValue(ct.Structure):
    """``struct flow_value``: per-direction counters since the last drain."""

    _fields_ = [
        ("first_tick", ct.c_uint64),
        ("last_tick", ct.c_uint64),
        ("packets", ct.c_uint64 * 2),
        ("bytes", ct.c_uint64 * 2),
        ("tcp_flags", ct.c_uint64),
        ("ifindex", ct.c_uint32),
        ("fwd", ct.c_uint8),
        ("initiator", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    ]


class FlowCacheSlot(ct.Structure):
    """``struct flow_cache_slot``: one per-CPU flow cache slot, valid in its generation."""

    _fields_ = [
        ("key", FlowKey),
        ("value", FlowValue),
        ("generation", ct.c_uint64),
        ("first_ns", ct.c_uint64),
    ]


class ClockPair(ct.Structure):
    """``struct clock_pair``: a tick count and CLOCK_MONOTONIC_COARSE read together."""

    _fields_ = [
        ("jiffies", ct.c_uint64),
        ("coarse_ns", ct.c_uint64),
    ]


class CollectorCounters(ct.Structure):
    """``struct collector_counters``: per-CPU losses and captures of the kernel side."""

    _fields_ = [
        ("map_full_packets", ct.c_uint64),
        ("map_full_bytes", ct.c_uint64),
        ("dns_ringbuf_full", ct.c_uint64),
        ("dns_captured", ct.c_uint64),
    ]


DNS_EVENT_HEADER = 24  # bytes before data[]


@cache
def dns_event_type(capture_len: int) -> type[ct.Structure]:
    """``struct dns_event`` for a given ``DNS_CAPTURE_LEN`` (the array length is a -D flag)."""

    class DnsEvent(ct.Structure):
        _fields_ = [
            ("ts_ns", ct.c_uint64),
            ("ifindex", ct.c_uint32),
            ("pkt_len", ct.c_uint32),
            ("cap_len", ct.c_uint16),
            ("direction", ct.c_uint8),
            ("pad", ct.c_uint8 * 5),
            ("data", ct.c_uint8 * capture_len),
        ]

    return DnsEvent


_FORMAT_CODES = {
    ct.c_uint8: "B", ct.c_uint16: "H", ct.c_uint32: "I", ct.c_uint64: "Q",
    ct.c_int8: "b", ct.c_int16: "h", ct.c_int32: "i", ct.c_int64: "q", ct.c_char: "c",
}  # fmt: skip


def struct_format(cls: type[Any]) -> str:
    """A :mod:`struct` format equal to a mirror's layout (byte arrays as ``Ns``).

    Draining unpacks thousands of entries per second; ``struct.iter_unpack`` over the
    raw batch buffer is several times faster than ctypes attribute access, and deriving
    the format here keeps the ctypes class the one declaration.
    """
    out = "<"
    for _name, ctype in cls._fields_:
        if issubclass(ctype, ct.Array):
            code = _FORMAT_CODES[ctype._type_]
            out += f"{ctype._length_}s" if code in "Bc" else f"{ctype._length_}{code}"
        else:
            out += _FORMAT_CODES[ctype]
    if struct.calcsize(out) != ct.sizeof(cls):
        raise TypeError(f"{cls.__name__} has implicit padding")  # a bug in this file
    return out


FLOW_KEY = struct.Struct(struct_format(FlowKey))
FLOW_VALUE = struct.Struct(struct_format(FlowValue))


def layout(struct: type[Any]) -> tuple[int, tuple[tuple[str, int, int], ...]]:
    """(size, ((field, offset, size), ...)) of a ctypes structure.

    bcc spells the compiler's padding out as fields (``__pad_end`` after a byte array
    whose length is not a multiple of the struct's alignment); ctypes pads the same bytes
    without naming them. The size covers them in both, so they are left out here.
    """
    fields = tuple(
        (name, getattr(struct, name).offset, getattr(struct, name).size)
        for name, *_ in struct._fields_
        if not name.startswith("__pad")
    )
    return ct.sizeof(struct), fields


def check_layout(name: str, mirror: type[Any], derived: type[Any]) -> None:
    """Raise StartupError if bcc's layout of ``name`` differs from the Python mirror."""
    want, got = layout(mirror), layout(derived)
    if want != got:
        raise StartupError(
            "abi",
            f"{name} layout of the compiled program {got} differs from "
            f"services/collector/abi.py {want}: rebuild both from bpf/flowscope_abi.h",
        )


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


SOCKET_EVENT = struct.Struct(struct_format(SocketEvent))
