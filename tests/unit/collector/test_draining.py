"""Kernel flow entries → RawFlow: orientation, ICMP ports, end reasons, direction memory."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import Any

import orjson
from flowscope.collector import abi
from flowscope.collector.draining import (
    TCP_FIN,
    TCP_RST,
    V_FLAGS,
    AddressNames,
    DirectionMemory,
    DrainContext,
    Drainer,
    monotonic_to_realtime_offset,
    raw_flow,
    raw_flow_wire,
)
from flowscope.core import codec
from flowscope.core.community_id import community_id
from flowscope.core.records import RawFlow
from hypothesis import given, settings
from hypothesis import strategies as st

CTX = DrainContext("node-a", now_mono_ns=10_000_000_000, offset_ns=1_000, idle_ns=3_000_000_000, forced=False)  # fmt: skip


def key(lo: str, hi: str, port_lo: int, port_hi: int, proto: int) -> tuple[Any, ...]:
    k = abi.FlowKey(port_lo=port_lo, port_hi=port_hi, proto=proto)
    a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
    k.family = abi.AF_INET if a.version == 4 else abi.AF_INET6
    k.addr_lo[: len(a.packed)] = list(a.packed)
    k.addr_hi[: len(b.packed)] = list(b.packed)
    return abi.FLOW_KEY.unpack(bytes(k))


def value(
    fwd: int = 0, flags: int = 0, last: int = 9_000_000_000, initiator: int = 0
) -> abi.FlowValue:
    v = abi.FlowValue(first_tick=8_000_000_000, last_tick=last, tcp_flags=flags, ifindex=3, fwd=fwd, initiator=initiator)  # fmt: skip
    v.packets[:] = [10, 20]
    v.bytes[:] = [1000, 2000]
    return abi.FLOW_VALUE.unpack(bytes(v))


def test_forward_lo_to_hi() -> None:
    f = raw_flow(key("10.0.0.1", "10.0.0.2", 40000, 80, 6), value(0, 0x12), 0, True, CTX)
    assert (f.src, f.sport, f.dst, f.dport) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (f.packets, f.bytes, f.rpackets, f.rbytes) == (10, 1000, 20, 2000)
    assert (f.start_ns, f.end_ns) == (8_000_001_000, 9_000_001_000)
    assert f.initiator and f.ifindex == 3 and f.observer == "node-a"


def test_forward_hi_to_lo_swaps_endpoints_and_counters() -> None:
    f = raw_flow(key("fd00::1", "fd00::2", 53, 40000, 17), value(1), 1, False, CTX)
    assert (f.src, f.sport, f.dst, f.dport) == ("fd00::2", 40000, "fd00::1", 53)
    assert (f.packets, f.bytes, f.rpackets, f.rbytes) == (20, 2000, 10, 1000)


def test_icmp_echo_ports_are_type_and_code_for_community_id() -> None:
    # The kernel keyed an echo request (type 8) with its counterpart (0) as "port".
    f = raw_flow(key("10.0.0.1", "10.0.0.2", 8, 0, 1), value(0), 0, False, CTX)
    assert (f.sport, f.dport) == (8, 0)
    reply = raw_flow(key("10.0.0.1", "10.0.0.2", 8, 0, 1), value(1), 1, False, CTX)
    assert (reply.src, reply.sport, reply.dport) == ("10.0.0.2", 0, 0)
    assert community_id(1, f.src, f.dst, f.sport, f.dport) == community_id(
        1, reply.src, reply.dst, reply.sport, reply.dport
    )
    unreachable = raw_flow(key("10.0.0.1", "10.0.0.2", 3, 1, 1), value(0), 0, False, CTX)
    assert (unreachable.sport, unreachable.dport) == (3, 1)  # one-way: type and code


def test_end_reasons() -> None:
    k = key("10.0.0.1", "10.0.0.2", 1, 2, 6)
    assert raw_flow(k, value(flags=0x11), 0, False, CTX).end_reason == "end_of_flow_detected"
    assert raw_flow(k, value(flags=0x14), 0, False, CTX).end_reason == "end_of_flow_detected"
    assert raw_flow(k, value(last=9_000_000_000), 0, False, CTX).end_reason == "active_timeout"
    assert raw_flow(k, value(last=6_000_000_000), 0, False, CTX).end_reason == "idle_timeout"
    forced = DrainContext("n", CTX.now_mono_ns, 0, CTX.idle_ns, forced=True)
    assert raw_flow(k, value(flags=0x11), 0, False, forced).end_reason == "forced_end"


def test_ticks_become_monotonic_then_unix_ns() -> None:
    # HZ=250: 4 ms ticks; the kernel's pair says tick 1000 was at 5 s monotonic.
    ctx = DrainContext("n", now_mono_ns=10_000_000_000, offset_ns=1_000, idle_ns=3_000_000_000,
                       forced=False, tick_ns=4_000_000, base_tick=1_000, base_ns=5_000_000_000)  # fmt: skip
    v = abi.FlowValue(first_tick=1_250, last_tick=1_000 + 2_000, ifindex=1)  # 6 s and 13 s
    f = raw_flow(
        key("10.0.0.1", "10.0.0.2", 1, 2, 17), abi.FLOW_VALUE.unpack(bytes(v)), 0, False, ctx
    )
    assert (f.start_ns, f.end_ns) == (6_000_001_000, 13_000_001_000)
    assert f.end_reason == "active_timeout"
    earlier = abi.FlowValue(first_tick=0, last_tick=500, ifindex=1)  # before the pair: 1 s, 3 s
    f = raw_flow(
        key("10.0.0.1", "10.0.0.2", 1, 2, 17), abi.FLOW_VALUE.unpack(bytes(earlier)), 0, False, ctx
    )
    assert (f.start_ns, f.end_ns, f.end_reason) == (1_000_001_000, 3_000_001_000, "idle_timeout")


def test_direction_memory_keeps_initiator_across_intervals() -> None:
    memory = DirectionMemory(capacity=2)
    k = key("10.0.0.1", "10.0.0.2", 40000, 80, 6)
    assert memory.resolve(abi.FLOW_KEY.pack(*k), value(fwd=1, initiator=1), ended=False) == (
        1,
        True,
    )
    # Next interval: the entry was re-created by the server's packet (fwd 0, no SYN).
    assert memory.resolve(abi.FLOW_KEY.pack(*k), value(fwd=0), ended=False) == (1, True)
    assert memory.resolve(abi.FLOW_KEY.pack(*k), value(fwd=0, flags=0x11), ended=True) == (1, True)
    assert memory.resolve(abi.FLOW_KEY.pack(*k), value(fwd=0), ended=False) == (
        0,
        False,
    )  # forgotten at FIN


def test_direction_memory_is_bounded() -> None:
    memory = DirectionMemory(capacity=2)
    for port in range(5):
        memory.resolve(
            abi.FLOW_KEY.pack(*key("10.0.0.1", "10.0.0.2", port, 80, 6)),
            value(initiator=1),
            ended=False,
        )
    assert len(memory) == 2


def test_clock_offset_matches_realtime() -> None:
    import time

    offset = monotonic_to_realtime_offset()
    assert abs(time.clock_gettime_ns(time.CLOCK_MONOTONIC) + offset - time.time_ns()) < 50_000_000


# ---- the wire dict the drain publishes is exactly RawFlow's wire form

ADDRESS_BYTES = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda b: b + bytes(12)),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([bytes(16), bytes(15) + b"\x01", bytes(10) + b"\xff\xff" + b"\x0a\0\0\x01"]),
)
U16, U64 = st.integers(0, 0xFFFF), st.integers(0, 2**63)


@st.composite
def entries(draw: st.DrawFn) -> tuple[tuple[Any, ...], tuple[Any, ...], int, bool, DrainContext]:
    family = draw(st.sampled_from([abi.AF_INET, abi.AF_INET6]))
    proto = draw(st.sampled_from([1, 6, 17, 58, 132, 47]))
    k = (draw(ADDRESS_BYTES), draw(ADDRESS_BYTES), draw(U16), draw(U16), proto, family, b"\0\0")
    v = (draw(U64), draw(U64), draw(U64), draw(U64), draw(U64), draw(U64), draw(U64),
         draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 1)), draw(st.integers(0, 1)), b"\0\0")  # fmt: skip
    ctx = DrainContext(draw(st.text(min_size=1, max_size=20)), draw(U64), draw(st.integers(-2**62, 2**62)),
                       draw(st.integers(0, 2**40)), draw(st.booleans()))  # fmt: skip
    return k, v, draw(st.integers(0, 1)), draw(st.booleans()), ctx


@settings(max_examples=300, deadline=None)
@given(entries())
def test_wire_dict_is_exactly_rawflow_to_wire(entry: tuple[Any, ...]) -> None:
    k, v, fwd, initiator, ctx = entry
    wire = raw_flow_wire(k, v, fwd, initiator, ctx)
    # from_wire checks every key and exact type (int is not bool); to_wire is the contract.
    canonical = RawFlow.from_wire(wire).to_wire()
    # Every field but the optional NAT pair, which only a paired flow carries.
    fields = [f.name for f in dataclasses.fields(RawFlow) if not f.name.startswith("nat_")]
    assert list(wire) == list(canonical) == fields
    assert [type(x) for x in wire.values()] == [type(x) for x in canonical.values()]
    assert (
        codec.encode(codec.RAW_FLOW, [wire]).body == codec.encode(codec.RAW_FLOW, [canonical]).body
    )
    assert raw_flow(k, v, fwd, initiator, ctx) == RawFlow.from_wire(wire)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.sampled_from([abi.AF_INET, abi.AF_INET6]))
def test_address_names_match_inet_ntop_and_stay_bounded(raw: bytes, family: int) -> None:
    names = AddressNames(capacity=2)
    expected = (
        str(ipaddress.IPv4Address(raw[:4]))
        if family == abi.AF_INET
        else socket.inet_ntop(socket.AF_INET6, raw)
    )
    assert names.text(raw, family) == expected == names.text(raw, family)
    names.text(bytes(16), family)
    names.text(b"\x01" * 16, family)
    assert len(names) <= 2


# ---- the drain's loop is raw_flow_wire + DirectionMemory + orjson, entry by entry


class _NoReader:
    """render_chunk() reads no map; the reader is never called."""

    def chunks(self) -> Any:
        raise AssertionError("not used")


class _Clock:
    tick_ns = 1

    def pair(self) -> tuple[int, int]:
        return 0, 0


@settings(max_examples=200, deadline=None)
@given(st.lists(entries(), min_size=1, max_size=12), st.data())
def test_render_chunk_is_raw_flow_wire_as_ndjson_with_direction_memory(
    drawn: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    ctx = drawn[0][4]
    # Later intervals of some flows (same key, another entry's counters), so what the
    # memory learnt from an initiator is used.
    index = st.integers(0, len(drawn) - 1)
    pairs = data.draw(st.lists(st.tuples(index, index), max_size=12))
    picks = [(drawn[i][0], drawn[j][1]) for i, j in pairs]
    rows = [(k, v) for k, v, *_ in drawn] + picks
    keys = b"".join(abi.FLOW_KEY.pack(*k) for k, _ in rows)
    values = b"".join(abi.FLOW_VALUE.pack(*v) for _, v in rows)
    drainer = Drainer(_NoReader(), _Clock(), ctx.observer, 1.0, DirectionMemory(4))  # type: ignore[arg-type]
    reference = DirectionMemory(4)
    expected = []
    for k, v in rows:
        ended = ctx.forced or bool(v[V_FLAGS] & (TCP_FIN | TCP_RST))
        fwd, initiator = reference.resolve(abi.FLOW_KEY.pack(*k), v, ended)
        expected.append(raw_flow_wire(k, v, fwd, initiator, ctx))
    got = drainer.render_chunk(keys, values, ctx)
    assert got == [orjson.dumps(wire) + b"\n" for wire in expected]
    assert codec.decode_body(b"".join(got)) == expected
    assert list(drainer.memory.known.items()) == list(reference.known.items())
