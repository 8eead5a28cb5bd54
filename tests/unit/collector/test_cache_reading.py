"""The flow cache's half merged into the drain: one record per flow, exact sums, the
kernel's direction rules (the cache seam answered by a dict, as the kernel's half would)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from flowscope.collector import abi
from flowscope.collector.cache_reading import (
    last_words,
    merge_chunk,
    merge_values,
    possible_cpus,
)
from flowscope.collector.draining import DirectionMemory, Drainer
from flowscope.collector.nat_pairing import NatPairing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.collector.test_nat_pairing import Clock, Conntrack, Reader

UDP, TCP, SYN = 17, 6, 0x02


def key(n: int) -> bytes:
    """A distinct IPv4 UDP key (10.0.x.y:n → 10.1.0.1:80)."""
    lo = bytes([10, 0, n >> 8 & 0xFF, n & 0xFF]).ljust(16, b"\0")
    hi = bytes([10, 1, 0, 1]).ljust(16, b"\0")
    return abi.FLOW_KEY.pack(lo, hi, 1024 + n, 80, UDP, abi.AF_INET, b"\0\0")


def value(
    pkts: tuple[int, int] = (1, 0), first: int = 100, last: int = 200, flags: int = 0,
    ifindex: int = 3, fwd: int = 0, initiator: int = 0,
) -> tuple[Any, ...]:  # fmt: skip
    return (first, last, pkts[0], pkts[1], pkts[0] * 100, pkts[1] * 100, flags, ifindex,
            fwd, initiator, b"\0\0")  # fmt: skip


def test_merge_adds_counters_joins_flags_and_widens_the_interval() -> None:
    a = value((3, 1), first=100, last=150, flags=0x10, ifindex=3, fwd=1)
    b = value((2, 5), first=90, last=300, flags=0x01, ifindex=7, fwd=0)
    merged = merge_values(a, b)
    assert merged[:7] == (90, 300, 5, 6, 500, 600, 0x11)
    assert merged[7:10] == (7, 0, 0)  # interface and forward of the earlier part's first packet


def test_merge_forward_is_the_syn_senders() -> None:
    syn = value(first=200, fwd=1, initiator=1)
    early = value(first=100, fwd=0)
    assert merge_values(early, syn)[8:10] == (1, 1)
    assert merge_values(syn, early)[8:10] == (1, 1)
    later_syn = value(first=50, last=900, fwd=0, initiator=1)
    assert merge_values(syn, later_syn)[8:10] == (0, 1)  # the later SYN, as the kernel's


def test_merge_chunk_adds_only_the_flows_it_holds_and_takes_them_out() -> None:
    keys = [key(n) for n in range(5)]
    values = [value((n + 1, 0)) for n in range(5)]
    raw_keys, raw_values = b"".join(keys), b"".join(abi.FLOW_VALUE.pack(*v) for v in values)
    # key(99) shares its last word (ports 1123/80, UDP, IPv4) with no key of the chunk;
    # other99 shares key(3)'s last word but not its addresses: a prefilter hit, no flow.
    other99 = key(3)[:4] + b"\x7f" + key(3)[5:]
    cached = {keys[1]: value((10, 2)), keys[4]: value((0, 7)), key(99): value(), other99: value()}
    words = last_words(cached)
    out = merge_chunk(raw_keys, raw_values, cached, words)
    got = list(abi.FLOW_VALUE.iter_unpack(out))
    assert [(v[2], v[3]) for v in got] == [(1, 0), (12, 2), (3, 0), (4, 0), (5, 7)]
    assert list(cached) == [key(99), other99]
    assert merge_chunk(raw_keys, raw_values, cached, words) is raw_values  # no copy


def test_possible_cpus_reads_ranges_and_singles(tmp_path: Path) -> None:
    possible = tmp_path / "possible"
    possible.write_text("0-3,8,10-11\n")
    assert possible_cpus(str(possible)) == 7


class Cache:
    """The kernel's retired half as a dict; each drain takes the next one."""

    def __init__(self, *halves: dict[bytes, tuple[Any, ...]]) -> None:
        self.halves = list(halves)
        self.pending = False
        self.advanced = 0

    def advance(self) -> None:
        self.advanced += 1
        self.pending = True

    def take(self) -> dict[bytes, tuple[Any, ...]]:
        assert self.pending, "take() before advance()"
        self.pending = False
        return dict(self.halves.pop(0))


def split(
    entries: list[tuple[bytes, tuple[Any, ...]]], chunk: int
) -> list[list[tuple[bytes, bytes]]]:
    rows = [(k, abi.FLOW_VALUE.pack(*v)) for k, v in entries]
    return [rows[at : at + chunk] for at in range(0, len(rows), chunk)]


def totals(d: Drainer) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """Per (source, source port): (packets, rpackets, bytes, rbytes); one record each."""
    out: dict[tuple[str, int], tuple[int, int, int, int]] = {}
    for f in d.drain().flows:
        ident = (f.src, f.sport) if f.dport == 80 else (f.dst, f.dport)
        assert ident not in out, f"two records for {ident}"
        out[ident] = (f.packets, f.rpackets, f.bytes, f.rbytes) if f.dport == 80 else (
            f.rpackets, f.packets, f.rbytes, f.bytes)  # fmt: skip
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans()),
             min_size=1, max_size=40),
    st.integers(1, 8),
    st.booleans(),
)  # fmt: skip
def test_each_flow_is_one_record_with_the_sum_of_its_map_and_cache_parts(
    flows: list[tuple[int, int, bool, bool]], chunk: int, paired: bool
) -> None:
    """Flows with a map part, a cache part, or both (in any chunk): every flow one record,
    its counters the sum of its parts, with or without NAT pairing in the drain."""
    in_map, in_cache, expected = [], {}, {}
    for n, (out, back, mapped, cached) in enumerate(flows):
        if not (mapped or cached):
            continue
        parts = [value((out, back), first=100 + n)] * (int(mapped) + int(cached))
        if mapped:
            in_map.append((key(n), parts[0]))
        if cached:
            in_cache[key(n)] = parts[-1]
        ident = (f"10.0.{n >> 8}.{n & 0xFF}", 1024 + n)
        times = len(parts)
        expected[ident] = (out * times, back * times, out * 100 * times, back * 100 * times)
    random.Random(len(flows)).shuffle(in_map)
    cache = Cache(in_cache)
    pairing = NatPairing(Conntrack()) if paired else None  # type: ignore[arg-type]
    d = Drainer(Reader(split(in_map, chunk)), Clock(), "node-a", 1e9, DirectionMemory(64),  # type: ignore[arg-type]
                pairing=pairing, cache=cache)  # fmt: skip
    assert totals(d) == expected
    assert cache.advanced == 1


def test_a_caller_that_advanced_already_is_not_advanced_again() -> None:
    cache = Cache({key(1): value((4, 0))})
    d = Drainer(Reader([]), Clock(), "node-a", 1e9, DirectionMemory(64), cache=cache)  # type: ignore[arg-type]
    cache.advance()
    assert totals(d) == {("10.0.0.1", 1025): (4, 0, 400, 0)}
    assert cache.advanced == 1


def test_a_cached_flow_keeps_the_initiator_the_drain_remembers() -> None:
    """The SYN sender seen in one interval's cache part is the source in the next
    interval's records too (DirectionMemory), as with map entries."""
    k = key(2)
    syn = value((0, 1), fwd=1, initiator=1, flags=SYN)
    later = value((0, 3), fwd=0)
    cache = Cache({k: syn}, {k: later})
    d = Drainer(Reader([], []), Clock(), "node-a", 1e9, DirectionMemory(64), cache=cache)  # type: ignore[arg-type]
    first = d.drain().flows
    second = d.drain().flows
    assert [(f.src, f.initiator) for f in first] == [("10.1.0.1", True)]
    assert [(f.src, f.initiator, f.packets) for f in second] == [("10.1.0.1", True, 3)]


def test_the_drain_reports_map_entries_not_records() -> None:
    """map_entries is the flow map's occupancy: flows only the cache held are records
    of the drain, not entries of the map."""
    cache = Cache({key(n): value() for n in (2, 3, 4)})
    d = Drainer(Reader(split([(key(1), value())], 4)), Clock(), "node-a", 1e9,  # type: ignore[arg-type]
                DirectionMemory(64), cache=cache)  # fmt: skip
    out: list[bytes] = []
    assert d.drain_into(out.extend) == 1 == d.map_entries
    assert len(out) == 4
