"""Drain the kernel flow map into :class:`RawFlow` records, every active timeout.

Each drain first makes the programs count into the other of the two flow maps, then
takes every entry out of the retired one with batched lookup-and-delete
(BPF_MAP_LOOKUP_AND_DELETE_BATCH, in chunks through reused buffers), so an entry holds
the counters of one interval and no packet lands in an entry being deleted. bcc's
``items_lookup_and_delete_batch()`` does the same syscall but allocates
max_entries-sized arrays and a ctypes object per entry at every drain; at 50k flows/s
that dominated the collector's CPU and memory, hence :class:`BatchReader`. The kernel's
"forward" direction is the first packet's unless a SYN without ACK said otherwise; since a deleted entry forgets
that, the drainer remembers (bounded) the direction of flows whose initiator it saw, so
a long connection keeps its source and destination across intervals. With NAT pairing
(:mod:`~flowscope.collector.nat_pairing`) the map is read whole before it is rendered, and
the one-way halves of DNAT'ed or SNAT'ed connections are joined into one record. Flows the kernel
still holds in its per-CPU flow cache (:mod:`~flowscope.collector.cache_reading`) are
read before the map and added to their map entries, so a flow is one record per drain.

Times: the kernel stamps packets with timer ticks (``bpf_jiffies64()``, 1/HZ); records
carry unix nanoseconds: ticks become CLOCK_MONOTONIC through the kernel's tick/clock
pair (:class:`TickClock`), then unix time with an offset measured at each drain
(:func:`monotonic_to_realtime_offset`).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from flowscope.collector import abi
from flowscope.collector.cache_reading import last_words, merge_chunk
from flowscope.core.records import ICMP_COUNTERPART, RawFlow

if TYPE_CHECKING:
    from flowscope.collector.nat_pairing import NatPairing

TCP_FIN = 0x01
TCP_RST = 0x04
TRIM_AFTER_BYTES = 8 << 20  # a paired drain that read this much returns the heap it freed


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


def _address(raw: bytes, family: int) -> str:
    if family == abi.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


class AddressNames:
    """Kernel address bytes → canonical text as a JSON string, remembered (bounded).

    A node's flows share few addresses (its pods, a few peers), and ``inet_ntop`` plus the
    slicing around it was a sixth of the per-flow cost. The drain writes NDJSON lines
    itself, so what is kept is the JSON form (``b'"10.0.0.1"'``: address text is ASCII
    and never needs escaping). Emptied when full: a simple bound that never grows past
    ``capacity`` entries.
    """

    __slots__ = ("_capacity", "by_family")

    def __init__(self, capacity: int = 65536) -> None:
        # One dict per family keyed by the raw bytes: no (bytes, family) tuple to build
        # and hash per lookup. ``by_family`` is read directly by the drain's loop.
        self.by_family: dict[int, dict[bytes, bytes]] = {abi.AF_INET: {}, abi.AF_INET6: {}}
        self._capacity = capacity

    def json(self, raw: bytes, family: int) -> bytes:
        """The address as a JSON string (quotes included)."""
        names = self.by_family.get(family)
        if names is None:  # not a family the kernel program writes: not cached
            return b'"%s"' % _address(raw, family).encode()
        name = names.get(raw)
        if name is None:
            if len(self) >= self._capacity:  # the bound applies to both together
                for known in self.by_family.values():
                    known.clear()
            name = names[raw] = b'"%s"' % _address(raw, family).encode()
        return name

    def text(self, raw: bytes, family: int) -> str:
        """The address in canonical text."""
        return self.json(raw, family)[1:-1].decode()

    def __len__(self) -> int:
        return sum(map(len, self.by_family.values()))


def _icmp_ports(proto: int, sport: int, dport: int) -> tuple[int, int]:
    """Kernel ICMP "ports" (type, counterpart-or-code) → (type, code) for records.

    For request/reply pairs the kernel stored the counterpart type, not the code; the
    code of those messages is 0 by definition, and Community ID ignores it anyway.
    """
    if ICMP_COUNTERPART[proto].get(sport) == dport:
        return sport, 0
    return sport, dport


CLOCK_MONOTONIC_COARSE = 6  # Linux clock id (not in Python's time module)


class TickClock:
    """Kernel timer ticks (jiffies) → CLOCK_MONOTONIC ns, from the flow program's pair.

    The program writes one (jiffies, coarse ns) pair with its first flow; both advance
    in the same timer tick, so ns = coarse_ns + (tick - jiffies) * tick length, where
    the tick length is CLOCK_MONOTONIC_COARSE's resolution (the kernel's TICK_NSEC).
    """

    def __init__(self, pair_table: Any) -> None:
        self._table = pair_table
        self.tick_ns = round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)

    def pair(self) -> tuple[int, int]:
        """(jiffies, coarse ns) as the kernel recorded them; (0, 0) before any flow."""
        value = self._table[ct.c_int(0)]
        return int(value.jiffies), int(value.coarse_ns)


@dataclass(frozen=True, slots=True)
class DrainContext:
    """What converting one entry needs besides the entry.

    Kernel times are ticks: monotonic ns = ``base_ns + (tick - base_tick) * tick_ns``
    (the defaults make ticks nanoseconds, for tests), unix ns adds ``offset_ns``.
    """

    observer: str
    now_mono_ns: int
    offset_ns: int
    idle_ns: int
    forced: bool
    names: AddressNames = field(default_factory=AddressNames, compare=False)
    tick_ns: int = 1
    base_tick: int = 0
    base_ns: int = 0
    # base_ns - base_tick * tick_ns: monotonic ns = tick * tick_ns + this (once per drain)
    mono_origin_ns: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mono_origin_ns", self.base_ns - self.base_tick * self.tick_ns)


def end_reason(tcp_flags: int, last_ns: int, ctx: DrainContext) -> str:
    """Why this interval's record ends (DESIGN.md ``flow.end_reason``); ``last_ns``: the
    last packet's CLOCK_MONOTONIC time."""
    if ctx.forced:
        return "forced_end"
    if tcp_flags & (TCP_FIN | TCP_RST):
        return "end_of_flow_detected"
    if ctx.now_mono_ns - last_ns > ctx.idle_ns:
        return "idle_timeout"
    return "active_timeout"


# Field positions in the unpacked tuples (abi.FLOW_KEY / abi.FLOW_VALUE).
K_ADDR_LO, K_ADDR_HI, K_PORT_LO, K_PORT_HI, K_PROTO, K_FAMILY = range(6)
V_FIRST, V_LAST, V_PKT0, V_PKT1, V_BYTES0, V_BYTES1, V_FLAGS, V_IFINDEX, V_FWD, V_INIT = range(10)


def raw_flow_wire(
    key: tuple[Any, ...], value: tuple[Any, ...], fwd: int, initiator: bool, ctx: DrainContext
) -> dict[str, Any]:
    """The one conversion of a kernel flow entry (unpacked key, value) into a record.

    Returns the ``raw.flow`` wire dict — exactly ``RawFlow.to_wire()``'s keys, order and
    types (tests/unit/collector/test_draining.py proves it). The drain itself writes the
    same record straight to its NDJSON line (:meth:`Drainer.render_chunk`, property-tested
    against this function); :func:`raw_flow` gives the value object where one is wanted.
    """
    family, proto = key[K_FAMILY], key[K_PROTO]
    text = ctx.names.text
    if fwd == abi.DIR_LO_HI:
        src, sport = text(key[K_ADDR_LO], family), key[K_PORT_LO]
        dst, dport = text(key[K_ADDR_HI], family), key[K_PORT_HI]
        packets, nbytes = value[V_PKT0], value[V_BYTES0]
        rpackets, rbytes = value[V_PKT1], value[V_BYTES1]
    else:
        src, sport = text(key[K_ADDR_HI], family), key[K_PORT_HI]
        dst, dport = text(key[K_ADDR_LO], family), key[K_PORT_LO]
        packets, nbytes = value[V_PKT1], value[V_BYTES1]
        rpackets, rbytes = value[V_PKT0], value[V_BYTES0]
    if proto in ICMP_COUNTERPART:
        sport, dport = _icmp_ports(proto, sport, dport)
    flags = value[V_FLAGS] & 0xFF
    tick_ns, origin = ctx.tick_ns, ctx.mono_origin_ns
    last = value[V_LAST] * tick_ns + origin  # CLOCK_MONOTONIC ns
    return {
        "observer": ctx.observer,
        "start_ns": value[V_FIRST] * tick_ns + origin + ctx.offset_ns,
        "end_ns": last + ctx.offset_ns,
        "end_reason": end_reason(flags, last, ctx),
        "proto": proto,
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "bytes": nbytes,
        "packets": packets,
        "rbytes": rbytes,
        "rpackets": rpackets,
        "tcp_flags": flags,
        "initiator": initiator,
        "ifindex": value[V_IFINDEX],
    }


def raw_flow(
    key: tuple[Any, ...], value: tuple[Any, ...], fwd: int, initiator: bool, ctx: DrainContext
) -> RawFlow:
    """A kernel flow entry as the :class:`RawFlow` value object (via :func:`raw_flow_wire`)."""
    return RawFlow(**raw_flow_wire(key, value, fwd, initiator, ctx))


@dataclass(slots=True)
class DirectionMemory:
    """Bounded memory of flows whose initiator was seen: canonical key → forward dir.

    A RST ends a connection; a FIN closes one direction only, and the other may go on
    sending (a half-close), or its own FIN and the last ACK fall into the next interval.
    So a flow whose interval had a FIN is still known in the next drain (``closing``):
    seen there without a FIN or RST it is live again, else it is forgotten after it.
    """

    capacity: int
    # Read (truthiness) by the drain's loop: while both are empty, no entry needs resolve().
    known: OrderedDict[bytes, int] = field(default_factory=OrderedDict)
    # Flows whose FIN the previous drain saw; those of this drain (``_closed``) follow.
    closing: dict[bytes, int] = field(default_factory=dict)
    _closed: dict[bytes, int] = field(default_factory=dict)

    def next_drain(self) -> None:
        """Start a drain: the flows the last one saw a FIN of are known for this one only."""
        self.closing, self._closed = self._closed, {}

    def resolve(self, ident: bytes, value: tuple[Any, ...], ended: bool) -> tuple[int, bool]:
        """(forward direction, initiator known) for this interval's entry (``ident``: key
        bytes); ``ended``: FIN or RST seen, or the shutdown drain."""
        if value[V_INIT]:
            fwd, is_known = int(value[V_FWD]), True
        elif ident in self.known:
            fwd, is_known = self.known[ident], True
        elif ident in self.closing:
            fwd, is_known = self.closing[ident], True
        else:
            return int(value[V_FWD]), False
        self.closing.pop(ident, None)
        if ended:
            self.known.pop(ident, None)
            if not value[V_FLAGS] & TCP_RST:
                self._closed[ident] = fwd
                if len(self._closed) > self.capacity:
                    del self._closed[next(iter(self._closed))]
        else:
            self.known[ident] = fwd
            self.known.move_to_end(ident)
            while len(self.known) > self.capacity:
                self.known.popitem(last=False)
        return fwd, is_known

    def __len__(self) -> int:
        return len(self.known)


class BatchReader:
    """Lookup-and-delete of a whole flow map the programs no longer count into, chunk by
    chunk, into reused buffers.

    ``map_fd`` is the program's outer array ``flows`` (bpf/flows.c): slot 0 holds the map
    the programs count into, slots 1 and 2 the two flow maps, for user space to find. A
    drain first puts the other map into slot 0 (:meth:`retire`); the kernel returns from
    that update only after an RCU grace period, when no program run that found the old
    map still runs, and only then is the old map emptied. Draining the map the programs
    count into lost the packets added between the copy and the delete of an entry.
    """

    def __init__(self, map_fd: int, chunk: int = 4096) -> None:
        from bcc.libbcc import lib  # the BPF syscall wrapper bcc itself uses

        self._lib = lib
        self._fd = map_fd
        self._chunk = chunk
        self._keys = ct.create_string_buffer(abi.FLOW_KEY.size * chunk)
        self._values = ct.create_string_buffer(abi.FLOW_VALUE.size * chunk)
        self._maps = (self._map_id(1), self._map_id(2))
        self._retired: int | None = None  # fd of the map retire() took out, until drained

    @property
    def pending(self) -> bool:
        """Whether retire() took a map out that chunks() has not drained yet."""
        return self._retired is not None

    def retire(self) -> None:
        """Make the programs count into the other (empty) map; blocks for a grace period
        (~10 ms): the collector runs it in a worker thread."""
        if self._retired is not None:
            return  # the retired map is still to be drained: swapping would bring it back
        active = self._map_id(0)
        spare = self._maps[1] if active == self._maps[0] else self._maps[0]
        old = self._map_fd(active)
        try:
            new = self._map_fd(spare)
            try:
                self._set_active(new)
            finally:
                os.close(new)
        except BaseException:
            os.close(old)  # nothing was retired: the next drain opens it again
            raise
        self._retired = old

    def chunks(self) -> Iterator[tuple[bytes, bytes]]:
        """(keys, values) raw bytes of each chunk taken out of the retired map (retiring
        the active one first unless :meth:`retire` already did)."""
        self.retire()
        fd, self._retired = self._retired, None
        assert fd is not None
        try:
            yield from self._drain(fd)
        finally:
            os.close(fd)  # entries left behind (an error) are drained after a later swap

    def _drain(self, fd: int) -> Iterator[tuple[bytes, bytes]]:
        token = ct.c_uint32(0)
        first = True
        while True:
            count = ct.c_uint32(self._chunk)
            res = self._lib.bpf_lookup_and_delete_batch(
                fd, None if first else ct.byref(token), ct.byref(token),
                self._keys, self._values, ct.byref(count),
            )  # fmt: skip
            err = ct.get_errno()
            n = count.value
            if n:
                # string_at copies just the n entries (``.raw[:k]`` copied the whole
                # buffer, then the slice again).
                yield (
                    ct.string_at(self._keys, n * abi.FLOW_KEY.size),
                    ct.string_at(self._values, n * abi.FLOW_VALUE.size),
                )
            if res != 0:
                if err == errno.ENOENT:
                    return  # the whole map has been walked
                raise OSError(err, f"BPF_MAP_LOOKUP_AND_DELETE_BATCH: {os.strerror(err)}")
            first = False

    def _map_id(self, slot: int) -> int:
        """The id of the map in one slot of ``flows`` (the syscall reads inner maps as ids)."""
        key, value = ct.c_int(slot), ct.c_uint32(0)
        if self._lib.bpf_lookup_elem(self._fd, ct.byref(key), ct.byref(value)) != 0:
            err = ct.get_errno()
            raise OSError(err, f"flows[{slot}]: {os.strerror(err)}")
        return value.value

    def _map_fd(self, map_id: int) -> int:
        fd = self._lib.bpf_map_get_fd_by_id(ct.c_uint32(map_id))
        if fd < 0:
            err = ct.get_errno()
            raise OSError(err, f"flow map {map_id}: {os.strerror(err)}")
        return int(fd)

    def _set_active(self, fd: int) -> None:
        key, value = ct.c_int(0), ct.c_int(fd)
        if self._lib.bpf_update_elem(self._fd, ct.byref(key), ct.byref(value), 0) != 0:
            err = ct.get_errno()
            raise OSError(err, f"flows[0] = flow map: {os.strerror(err)}")


class CacheHalves(Protocol):
    """The kernel flow cache as the drain sees it (:class:`~flowscope.collector.
    cache_reading.FlowCache`; unit tests substitute a dict-backed fake)."""

    @property
    def pending(self) -> bool:
        """Whether a generation was retired and not read yet."""
        ...

    def advance(self) -> None:
        """Retire the current generation (waits for a grace period)."""

    def take(self) -> dict[bytes, tuple[Any, ...]]:
        """The retired generation's flows: key bytes → FLOW_VALUE tuple."""
        ...


@dataclass(slots=True)
class DrainResult:
    """One drain: the records and what the map looked like."""

    flows: list[RawFlow]
    entries: int


@dataclass(slots=True)
class Drainer:
    """Turns the kernel flow map into raw flow records (call from a worker thread)."""

    reader: BatchReader
    clock: TickClock
    observer: str
    idle_timeout_s: float
    memory: DirectionMemory
    names: AddressNames = field(default_factory=AddressNames)
    # Joins the one-way halves of DNAT'ed or SNAT'ed connections (nat_pairing.py); None: off.
    pairing: NatPairing | None = None
    # The kernel's per-CPU flow cache (cache_reading.py); None: compiled without it.
    cache: CacheHalves | None = None
    # Entries the last drain took out of the flow map: its occupancy, for the
    # map_entries gauge (not the lines: cache-only flows add lines, NAT pairing joins two).
    map_entries: int = field(default=0, init=False)

    def drain(self, forced: bool = False) -> DrainResult:
        """Take every entry out of the map and convert it; all records at once, as RawFlow
        (decoded from the lines :meth:`drain_into` publishes, so they are checked too)."""
        lines: list[bytes] = []
        entries = self.drain_into(lines.extend, forced)
        return DrainResult([RawFlow.from_wire(orjson.loads(line)) for line in lines], entries)

    def drain_into(self, sink: Callable[[list[bytes]], None], forced: bool = False) -> int:
        """Take every entry out of the (retired) map, handing ``raw.flow`` NDJSON lines to
        ``sink`` chunk by chunk.

        A chunk of lines at a time keeps memory flat when a drain holds hundreds of
        thousands of flows (with NAT pairing the chunks' raw bytes, 104 B per entry, are
        read ahead; see :meth:`_paired_chunks`). Returns how many entries the map held
        (:attr:`map_entries`).
        """
        for lines in self.drain_chunks(forced):
            sink(lines)
        return self.map_entries

    def drain_chunks(self, forced: bool = False) -> Iterator[list[bytes]]:
        """As :meth:`drain_into`, one chunk's lines per step: a caller can do other work
        between chunks (the collector's event loop does; each chunk is a few ms).

        With the flow cache, the generation advances first (unless the caller already did
        it: :meth:`FlowCache.advance` waits for a grace period, the collector runs it in a
        worker thread), the retired half is read, and each cached flow is added to its map
        entry of this drain, or rendered after the map's entries when it has none."""
        self.memory.next_drain()
        cached: dict[bytes, tuple[Any, ...]] = {}
        if self.cache is not None:
            if not self.cache.pending:
                self.cache.advance()
            cached = self.cache.take()
        self.map_entries = 0
        if self.pairing is not None and self.pairing.enabled:
            yield from self._paired_chunks(self.pairing, forced, cached)
            return
        ctx: DrainContext | None = None
        words = last_words(cached)
        for keys, values in self.reader.chunks():
            self.map_entries += len(keys) // abi.FLOW_KEY.size
            # Read after the first chunk: the pair exists once any entry does.
            ctx = ctx or self._context(forced)
            if cached:
                values = merge_chunk(keys, values, cached, words)
            yield self.render_chunk(keys, values, ctx)
        for keys, values in _cached_chunks(cached):
            ctx = ctx or self._context(forced)
            yield self.render_chunk(keys, values, ctx)

    def _paired_chunks(
        self, pairing: NatPairing, forced: bool, cached: dict[bytes, tuple[Any, ...]]
    ) -> Iterator[list[bytes]]:
        """:meth:`drain_chunks` with NAT pairing: the whole map is read first (raw bytes,
        yielding an empty step after each chunk), since the two halves of a connection
        may sit in any two chunks; then each chunk is rendered without the entries the
        pairing holds back, and those last, resolved. Cached flows are merged into the
        chunks (or appended as chunks of their own) before the pairing sees them."""
        chunks, read = yield from self._read_whole_map(cached)
        chunks.extend(_cached_chunks(cached))
        if not chunks:
            return
        yield from self._render_paired(pairing, chunks, self._context(forced))
        if read >= TRIM_AFTER_BYTES:
            _return_freed_heap()

    def _read_whole_map(
        self, cached: dict[bytes, tuple[Any, ...]]
    ) -> Generator[list[bytes], None, tuple[list[tuple[bytes, bytes]], int]]:
        """Every chunk of the map as raw bytes, cached flows merged in, yielding an empty
        step after each; returns (the chunks, how many bytes they hold)."""
        chunks = []
        read = 0
        words = last_words(cached)
        for keys, values in self.reader.chunks():
            self.map_entries += len(keys) // abi.FLOW_KEY.size
            if cached:
                values = merge_chunk(keys, values, cached, words)
            chunks.append((keys, values))
            read += len(keys) + len(values)
            yield []
        return chunks, read

    def _render_paired(
        self, pairing: NatPairing, chunks: list[tuple[bytes, bytes]], ctx: DrainContext
    ) -> Iterator[list[bytes]]:
        """Each chunk's lines without the entries the pairing holds back (emptying
        ``chunks``), then the held ones, resolved."""
        held_at = pairing.candidates(chunks)
        chunks.reverse()  # popped from the end: each chunk's bytes freed once rendered
        held_at.reverse()
        while chunks:
            keys, values = chunks.pop()
            positions = held_at.pop()
            if positions:
                keys, values = pairing.hold(keys, values, positions)
            if keys:
                yield self.render_chunk(keys, values, ctx)
        if pairing.held:
            yield pairing.resolve(self.memory, ctx)

    def _context(self, forced: bool) -> DrainContext:
        base_tick, base_ns = self.clock.pair()
        return DrainContext(
            observer=self.observer,
            now_mono_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC),
            offset_ns=monotonic_to_realtime_offset(),
            idle_ns=int(self.idle_timeout_s * 1e9),
            forced=forced,
            names=self.names,
            tick_ns=self.clock.tick_ns,
            base_tick=base_tick,
            base_ns=base_ns,
        )

    def render_chunk(self, keys: bytes, values: bytes, ctx: DrainContext) -> list[bytes]:
        """Every entry of a chunk as its ``raw.flow`` NDJSON line (newline included).

        Byte for byte ``orjson.dumps(raw_flow_wire(...)) + b"\\n"`` with the
        :class:`DirectionMemory` applied entry by entry (property-tested), written out
        in one loop into one ``bytes`` template: building the wire dict and encoding it
        took ~1.3 µs per flow, the template ~0.8, and the function calls per entry (two
        address texts, the end reason, the direction) were a third of the old loop:
        hence one flat loop, with no step of its own per entry.
        """
        key_size = abi.FLOW_KEY.size
        memory = self.memory
        resolve, remembered, closing = memory.resolve, memory.known, memory.closing
        by_family, address = ctx.names.by_family, ctx.names.json
        template = _flow_line_template(ctx.observer)
        offset, tick_ns, origin = ctx.offset_ns, ctx.tick_ns, ctx.mono_origin_ns
        forced, now, idle = ctx.forced, ctx.now_mono_ns, ctx.idle_ns
        reasons = (b'"active_timeout"', b'"idle_timeout"')
        booleans = (b"false", b"true")
        starts: dict[int, bytes] = {}
        ends: dict[int, tuple[bytes, bytes]] = {}
        out: list[bytes] = []
        append = out.append
        at = -key_size
        for key, value in zip(
            abi.FLOW_KEY.iter_unpack(keys), abi.FLOW_VALUE.iter_unpack(values), strict=True
        ):
            at += key_size
            addr_lo, addr_hi, port_lo, port_hi, proto, family, _ = key
            first, last, pkt0, pkt1, bytes0, bytes1, flags, ifindex, fwd, init, _ = value
            flags &= 0xFF
            if init or remembered or closing:  # else: as the kernel saw it, initiator unknown
                ended = forced or bool(flags & (TCP_FIN | TCP_RST))
                fwd, initiator = resolve(keys[at : at + key_size], value, ended)
            else:
                initiator = False
            names = by_family.get(family) or {}
            lo = names.get(addr_lo) or address(addr_lo, family)
            hi = names.get(addr_hi) or address(addr_hi, family)
            if fwd == abi.DIR_LO_HI:
                src, sport, dst, dport = lo, port_lo, hi, port_hi
                packets, nbytes, rpackets, rbytes = pkt0, bytes0, pkt1, bytes1
            else:
                src, sport, dst, dport = hi, port_hi, lo, port_lo
                packets, nbytes, rpackets, rbytes = pkt1, bytes1, pkt0, bytes0
            if proto in ICMP_COUNTERPART:
                sport, dport = _icmp_ports(proto, sport, dport)
            # Times are ticks, and a chunk's entries share few: each is converted and
            # printed once (19-digit ints were a fifth of the formatting).
            start = starts.get(first)
            if start is None:
                start = starts[first] = b"%d" % (first * tick_ns + origin + offset)
            end = ends.get(last)
            if end is None:
                mono = last * tick_ns + origin  # CLOCK_MONOTONIC ns
                end = ends[last] = (b"%d" % (mono + offset), reasons[now - mono > idle])
            if forced:
                reason = b'"forced_end"'
            elif flags & (TCP_FIN | TCP_RST):
                reason = b'"end_of_flow_detected"'
            else:
                reason = end[1]
            append(template % (
                start, end[0], reason, proto, src, dst, sport, dport, nbytes,
                packets, rbytes, rpackets, flags, booleans[initiator], ifindex,
            ))  # fmt: skip
        return out


def _flow_line_template(observer: str) -> bytes:
    """:data:`_FLOW_REST` behind the observer, which is the same in every line of a
    drain: part of the template (``%`` escaped)."""
    return b'{"observer":' + orjson.dumps(observer).replace(b"%", b"%%") + _FLOW_REST


def _cached_chunks(
    cached: dict[bytes, tuple[Any, ...]], chunk: int = 4096
) -> Iterator[tuple[bytes, bytes]]:
    """(keys, values) bytes of the cached flows no map entry took, ``chunk`` at a time."""
    items = list(cached.items())
    cached.clear()
    pack = abi.FLOW_VALUE.pack
    for at in range(0, len(items), chunk):
        part = items[at : at + chunk]
        yield b"".join(key for key, _ in part), b"".join(pack(*value) for _, value in part)


def _return_freed_heap() -> None:
    """Give the heap a large paired drain freed back to the system (best effort)."""
    # glibc keeps the freed chunk buffers in its heap (its mmap threshold rose
    # when the first were freed): ~10 MB more resident after a 250k-entry drain
    # without this; malloc_trim takes ~2.5 ms then.
    with contextlib.suppress(OSError, AttributeError):
        ct.CDLL(None).malloc_trim(0)


# raw_flow_wire()'s dict as orjson writes it, plus the newline (key order: RawFlow's).
# A raw.flow line is b'{"observer":' + the observer's JSON + _FLOW_REST % (...).
_FLOW_REST = (
    b',"start_ns":%b,"end_ns":%b,"end_reason":%b,"proto":%d,"src":%b,'
    b'"dst":%b,"sport":%d,"dport":%d,"bytes":%d,"packets":%d,"rbytes":%d,"rpackets":%d,'
    b'"tcp_flags":%d,"initiator":%b,"ifindex":%d}\n'
)
