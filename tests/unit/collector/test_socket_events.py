"""The socket-event ABI (golden bytes) and its one conversion to RawSocket."""

from __future__ import annotations

import ctypes
import ipaddress
import struct

import pytest
from flowscope.collector.abi import SocketEvent
from flowscope.collector.socket_tracing import check_layout, decode_event, to_raw_socket
from flowscope.core.errors import CodecError, StartupError
from flowscope.core.records import RawSocket

# struct fs_socket_event as C lays it out on x86-64 / arm64 (little-endian).
LAYOUT = struct.Struct("<QQQQII16s16sHHBBBB16s")


def golden(
    family: int = 2,
    saddr: bytes = bytes([10, 204, 0, 1]),
    daddr: bytes = bytes([10, 204, 0, 2]),
    event: int = 1,
) -> bytes:
    return LAYOUT.pack(
        1_000, 0xC00C1E, 0x1234, 0x4242, 4321, 4322,
        saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"),
        40000, 443, family, 6, event, 0, b"curl".ljust(16, b"\0"),
    )  # fmt: skip


def test_mirror_matches_golden_layout() -> None:
    assert ctypes.sizeof(SocketEvent) == LAYOUT.size == 96
    offsets = {name: getattr(SocketEvent, name).offset for name, _ in SocketEvent._fields_}
    assert offsets == {
        "time_ns": 0, "cookie": 8, "cgroup_id": 16, "netns": 24, "pid": 32, "tid": 36,
        "saddr": 40, "daddr": 56, "sport": 72, "dport": 74, "family": 76, "proto": 77,
        "event": 78, "pad": 79, "comm": 80,
    }  # fmt: skip


def test_golden_bytes_decode_to_raw_socket() -> None:
    event = decode_event(golden() + b"trailing ring-buffer padding")
    assert bytes(event) == golden()
    record = to_raw_socket(event, "node-1", 5_000, "c" * 64)
    assert record == RawSocket(
        observer="node-1", time_ns=6_000, event="connect", proto=6, src="10.204.0.1",
        sport=40000, dst="10.204.0.2", dport=443, pid=4321, tid=4322, comm="curl",
        cgroup_id=0x1234, container_id="c" * 64, netns=0x4242,
    )  # fmt: skip
    assert RawSocket.from_wire(record.to_wire()) == record


def test_ipv6_and_v4_mapped_addresses() -> None:
    v6 = ipaddress.IPv6Address("fd00:204::1").packed
    mapped = ipaddress.IPv6Address("::ffff:10.204.0.9").packed
    record = to_raw_socket(decode_event(golden(10, v6, mapped, event=2)), "n", 0, "")
    assert (record.src, record.dst, record.event) == ("fd00:204::1", "10.204.0.9", "accept")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (golden()[:95], "short-socket-event"),
        (golden(family=7), "bad-socket-event"),
        (golden(event=9), "bad-socket-event"),
    ],
)
def test_bad_events_raise_codec_error(raw: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as info:
        to_raw_socket(decode_event(raw), "n", 0, "")
    assert info.value.reason == reason


def test_comm_with_invalid_utf8_is_replaced() -> None:
    raw = bytearray(golden())
    raw[80:84] = b"\xff\xfeab"
    assert to_raw_socket(decode_event(bytes(raw)), "n", 0, "").comm == "\ufffd\ufffdab"


BCC_FIELDS = [
    ("time_ns", "__u64"), ("cookie", "__u64"), ("cgroup_id", "__u64"), ("netns", "__u64"),
    ("pid", "__u32"), ("tid", "__u32"), ("saddr", "__u8[16]"), ("daddr", "__u8[16]"),
    ("sport", "__u16"), ("dport", "__u16"), ("family", "__u8"), ("proto", "__u8"),
    ("event", "__u8"), ("pad", "__u8"), ("comm", "char[16]"),
]  # fmt: skip


def test_layout_check_accepts_bcc_view_and_rejects_drift() -> None:
    check_layout(BCC_FIELDS)
    drifted = [*BCC_FIELDS[:4], ("pid", "__u64"), *BCC_FIELDS[5:]]
    with pytest.raises(StartupError, match="fs_socket_event"):
        check_layout(drifted)
    with pytest.raises(StartupError):
        check_layout(BCC_FIELDS[:-1])
