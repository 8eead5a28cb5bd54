"""Drain the kernel flow map into :class:`RawFlow` records, every active timeout.

Each drain takes every entry out of the map with one batched lookup-and-delete, so an
entry holds the counters of one interval. The kernel's "forward" direction is the
first packet's unless a SYN without ACK said otherwise; since a deleted entry forgets
that, the drainer remembers (bounded) the direction of flows whose initiator it saw, so
a long connection keeps its source and destination across intervals.

Times: the kernel stamps packets with ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC); records
carry unix nanoseconds, converted with an offset measured at each drain
(:class:`ClockOffset`).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowscope.collector import abi
from flowscope.core.records import RawFlow

TCP = 6
ICMP = 1
ICMPV6 = 58
TCP_FIN = 0x01
TCP_RST = 0x04

_ICMP_PAIRED = {
    ICMP: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17},
    ICMPV6: {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133,
             135: 136, 136: 135, 139: 140, 140: 139, 144: 145, 145: 144},
}  # fmt: skip


def monotonic_to_realtime_offset(samples: int = 5) -> int:
    """realtime - monotonic in ns, from the tightest of a few bracketed readings."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.time_ns()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        width = after - before
        if best is None or width < best[0]:
            best = (width, real - (before + after) // 2)
    assert best is not None
    return best[1]


def _address(raw: Any, family: int) -> str:
    packed = bytes(raw)
    if family == abi.AF_INET:
        return str(ipaddress.IPv4Address(packed[:4]))
    return str(ipaddress.IPv6Address(packed))


def _icmp_ports(proto: int, sport: int, dport: int) -> tuple[int, int]:
    """Kernel ICMP "ports" (type, counterpart-or-code) → (type, code) for records.

    For request/reply pairs the kernel stored the counterpart type, not the code; the
    code of those messages is 0 by definition, and Community ID ignores it anyway.
    """
    if _ICMP_PAIRED[proto].get(sport) == dport:
        return sport, 0
    return sport, dport


@dataclass(frozen=True, slots=True)
class DrainContext:
    """What converting one entry needs besides the entry."""

    observer: str
    now_mono_ns: int
    offset_ns: int
    idle_ns: int
    forced: bool


def end_reason(tcp_flags: int, last_ns: int, ctx: DrainContext) -> str:
    """Why this interval's record ends (DESIGN.md ``flow.end_reason``)."""
    if ctx.forced:
        return "forced_end"
    if tcp_flags & (TCP_FIN | TCP_RST):
        return "end_of_flow_detected"
    if ctx.now_mono_ns - last_ns > ctx.idle_ns:
        return "idle_timeout"
    return "active_timeout"


def raw_flow(key: Any, value: Any, fwd: int, initiator: bool, ctx: DrainContext) -> RawFlow:
    """The one conversion of a kernel flow entry (key, value) into a RawFlow."""
    lo = (_address(key.addr_lo, key.family), key.port_lo)
    hi = (_address(key.addr_hi, key.family), key.port_hi)
    (src, sport), (dst, dport) = (lo, hi) if fwd == abi.DIR_LO_HI else (hi, lo)
    if key.proto in _ICMP_PAIRED:
        sport, dport = _icmp_ports(key.proto, sport, dport)
    rev = 1 - fwd
    flags = int(value.tcp_flags) & 0xFF
    return RawFlow(
        observer=ctx.observer,
        start_ns=value.first_ns + ctx.offset_ns,
        end_ns=value.last_ns + ctx.offset_ns,
        end_reason=end_reason(flags, value.last_ns, ctx),
        proto=key.proto,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        bytes=value.bytes[fwd],
        packets=value.packets[fwd],
        rbytes=value.bytes[rev],
        rpackets=value.packets[rev],
        tcp_flags=flags,
        initiator=initiator,
        ifindex=value.ifindex,
    )


@dataclass(slots=True)
class DirectionMemory:
    """Bounded memory of flows whose initiator was seen: canonical key → forward dir."""

    capacity: int
    _known: OrderedDict[bytes, int] = field(default_factory=OrderedDict)

    def resolve(self, key: Any, value: Any, ended: bool) -> tuple[int, bool]:
        """(forward direction, initiator known) for this interval's entry."""
        ident = bytes(key)
        if value.initiator:
            fwd, known = int(value.fwd), True
        elif ident in self._known:
            fwd, known = self._known[ident], True
        else:
            return int(value.fwd), False
        if ended:
            self._known.pop(ident, None)
        else:
            self._known[ident] = fwd
            self._known.move_to_end(ident)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        return fwd, known

    def __len__(self) -> int:
        return len(self._known)


@dataclass(slots=True)
class DrainResult:
    """One drain: the records and what the map looked like."""

    flows: list[RawFlow]
    entries: int


@dataclass(slots=True)
class Drainer:
    """Turns the kernel flow map into RawFlow records (call from a worker thread)."""

    table: Any  # bcc hash table "flows"
    observer: str
    idle_timeout_s: float
    memory: DirectionMemory

    def drain(self, forced: bool = False) -> DrainResult:
        """Take every entry out of the map and convert it."""
        ctx = DrainContext(
            observer=self.observer,
            now_mono_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC),
            offset_ns=monotonic_to_realtime_offset(),
            idle_ns=int(self.idle_timeout_s * 1e9),
            forced=forced,
        )
        flows = list(self._convert(self.table.items_lookup_and_delete_batch(), ctx))
        return DrainResult(flows, len(flows))

    def _convert(self, items: Iterable[tuple[Any, Any]], ctx: DrainContext) -> Iterable[RawFlow]:
        for key, value in items:
            ended = bool(value.tcp_flags & (TCP_FIN | TCP_RST))
            fwd, initiator = self.memory.resolve(key, value, ended or ctx.forced)
            yield raw_flow(key, value, fwd, initiator, ctx)
