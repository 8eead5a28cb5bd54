"""The socket-event ABI (golden bytes) and its one conversion to RawSocket."""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import struct
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from flowscope.collector.abi import SOCKET_EVENT, SocketEvent
from flowscope.collector.socket_tracing import (
    address_text,
    check_layout,
    decode_event,
    socket_lines,
    socket_wire,
    to_raw_socket,
)
from flowscope.core import codec
from flowscope.core.errors import CodecError, StartupError
from flowscope.core.records import RawSocket
from hypothesis import given, settings
from hypothesis import strategies as st

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
    assert SOCKET_EVENT.pack(*event) == golden()
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


# ---- the published wire dict is exactly RawSocket's wire form; addresses as ipaddress writes them


def ipaddress_text(family: int, raw: bytes) -> str:
    """The reference: the form socket events always had (ipaddress, v4-mapped as IPv4)."""
    if family == 2:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw[:16])
    return str(address.ipv4_mapped or address)


V6_BYTES = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(12) + b),  # ::a.b.c.d, ::, ::1
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b),  # v4-mapped
    st.lists(st.sampled_from([b"\0\0", b"\0\1", b"\xfd\0"]), min_size=8, max_size=8).map(b"".join),
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just(2), st.binary(min_size=16, max_size=16)), st.tuples(st.just(10), V6_BYTES)
    )
)
def test_address_text_matches_ipaddress(case: tuple[int, bytes]) -> None:
    family, raw = case
    assert address_text(family, raw) == ipaddress_text(family, raw)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([2, 10]), V6_BYTES, V6_BYTES, st.integers(1, 4), st.binary(max_size=16),
    st.integers(0, 2**63), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF),
    st.integers(-(2**62), 2**62), st.text(max_size=70),
)  # fmt: skip
def test_socket_wire_is_exactly_rawsocket_to_wire(
    family: int, saddr: bytes, daddr: bytes, kind: int, comm: bytes,
    big: int, small: int, port: int, offset: int, container: str,
) -> None:  # fmt: skip
    raw = LAYOUT.pack(big, big, big, big, small, small, saddr, daddr, port, port, family, 17,
                      kind, 0, comm.ljust(16, b"\0"))  # fmt: skip
    event = decode_event(raw)
    wire = socket_wire(event, "node", offset, container)
    canonical = RawSocket.from_wire(wire).to_wire()
    assert list(wire) == list(canonical) == [f.name for f in dataclasses.fields(RawSocket)]
    assert [type(x) for x in wire.values()] == [type(x) for x in canonical.values()]
    assert (
        codec.encode(codec.RAW_SOCKET, [wire]).body
        == codec.encode(codec.RAW_SOCKET, [canonical]).body
    )
    # Same values as reading the ctypes mirror field by field (the previous decoding).
    mirror = SocketEvent.from_buffer_copy(raw)
    assert (wire["time_ns"], wire["pid"], wire["tid"], wire["cgroup_id"], wire["netns"]) == (
        mirror.time_ns + offset, mirror.pid, mirror.tid, mirror.cgroup_id, mirror.netns,
    )  # fmt: skip
    assert wire["comm"] == mirror.comm.decode("utf-8", errors="replace")
    assert (wire["src"], wire["dst"]) == (
        ipaddress_text(family, bytes(mirror.saddr)), ipaddress_text(family, bytes(mirror.daddr)),
    )  # fmt: skip
    assert to_raw_socket(event, "node", offset, container) == RawSocket.from_wire(wire)


# (family, saddr, daddr, kind, comm, cgroup id, u64, port, pid): some kinds and families
# bad; few pids and netns values (u64 % 3), so that lines share their owner part
EVENT_ROWS = st.tuples(
    st.sampled_from([2, 10, 2, 10, 7]), V6_BYTES, V6_BYTES, st.integers(0, 5),
    st.sampled_from([b"curl", b"nginx", b"\xff\xfebad", b"", b'q"\\\x01\x7f']), st.sampled_from([0, 7, 9]),
    st.integers(0, 2**63), st.integers(0, 0xFFFF), st.sampled_from([7, 8, 2**31 - 1]),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENT_ROWS, max_size=20), st.integers(-(2**62), 2**62), st.text(max_size=12))
def test_socket_lines_are_socket_wire_as_ndjson(
    rows: list[tuple[Any, ...]], offset: int, node: str
) -> None:
    events = []
    for family, saddr, daddr, kind, comm, cgroup, big, port, pid in rows:
        fields = (big, big, cgroup, big % 3, pid, pid - 1, saddr, daddr, port, port, family, 6, kind, 0, comm.ljust(16, b"\0"))  # fmt: skip
        events.append(decode_event(LAYOUT.pack(*fields)))
    containers = {7: "c" * 64, 9: ""}
    asked: list[set[int]] = []

    def container_ids(ids: Iterable[int]) -> dict[int, str]:
        asked.append(set(ids))
        return {i: containers[i] for i in asked[-1]}

    lines, odd = socket_lines(events, node, offset, container_ids)
    expected, rejected = [], []
    for event in events:
        try:
            expected.append(socket_wire(event, node, offset, containers.get(event[2], "")))
        except CodecError:
            rejected.append(event)
    assert lines == [orjson.dumps(wire) + b"\n" for wire in expected]
    assert odd == rejected
    assert codec.decode_body(b"".join(lines)) == expected
    assert asked == [{e[2] for e in events} - {0}]  # each cgroup resolved once per read
