"""NAT pairing in the drain: which flows are held, looked up, joined, rewritten, or left
exactly as they are (the conntrack seam answered by a table, as the kernel would)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from flowscope.collector import abi
from flowscope.collector.conntrack import (
    Answer,
    ConntrackError,
    ConntrackFailed,
    ConntrackUnavailable,
    CtTuple,
)
from flowscope.collector.draining import DirectionMemory, Drainer
from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.nat_pairing import (
    NatPairing,
    chunk_addresses,
    chunk_receivers,
    chunk_senders,
    chunk_touching,
)
from flowscope.core.records import RawFlow
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

A, VIP, B, C = "10.0.0.5", "10.96.0.10", "10.0.1.7", "10.0.2.9"
E, N = "203.0.113.9", "10.0.0.1"  # an outside server; the node's uplink address (SNAT)
ICMP, TCP, UDP = 1, 6, 17
SYN, ACK, FIN = 0x02, 0x10, 0x01


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def entry(
    src: str, sport: int, dst: str, dport: int, proto: int = TCP, *, packets: int = 5,
    nbytes: int = 500, flags: int = 0, first: int = 100, last: int = 900, syn: bool = False,
) -> tuple[bytes, bytes]:  # fmt: skip
    """A one-way flow entry (key bytes, value bytes) as the kernel stores it: ends in
    canonical order, the counters in the sender's slot."""
    ends = sorted([(packed(src).ljust(16, b"\0"), sport), (packed(dst).ljust(16, b"\0"), dport)])
    sender_lo = ends[0] == (packed(src).ljust(16, b"\0"), sport)
    family = abi.AF_INET if ":" not in src else abi.AF_INET6
    key = abi.FLOW_KEY.pack(ends[0][0], ends[1][0], ends[0][1], ends[1][1], proto, family, b"\0\0")
    counts = (packets, 0, nbytes, 0) if sender_lo else (0, packets, 0, nbytes)
    fwd = abi.DIR_LO_HI if sender_lo else abi.DIR_HI_LO
    value = abi.FLOW_VALUE.pack(first, last, counts[0], counts[1], counts[2], counts[3], flags,
                                7, fwd, int(syn), b"\0\0")  # fmt: skip
    return key, value


def two_way(src: str, sport: int, dst: str, dport: int) -> tuple[bytes, bytes]:
    key, value = entry(src, sport, dst, dport, UDP)
    v = list(abi.FLOW_VALUE.unpack(value))
    v[2:6] = [3, 4, 300, 400]
    return key, abi.FLOW_VALUE.pack(*v)


class Reader:
    """The map as a list of chunks; each drain takes the next list."""

    def __init__(self, *drains: list[list[tuple[bytes, bytes]]]) -> None:
        self.drains = list(drains)

    def chunks(self) -> Iterator[tuple[bytes, bytes]]:
        for chunk in self.drains.pop(0):
            yield b"".join(k for k, _ in chunk), b"".join(v for _, v in chunk)


class Clock:
    tick_ns = 1

    def pair(self) -> tuple[int, int]:
        return 0, 0


class Conntrack:
    """The kernel's table as a dict: original tuple → reply tuple (the lookup seam). As
    the kernel does, an entry is found by either direction's tuple."""

    def __init__(
        self, entries: dict[CtTuple, CtTuple] | None = None, fail: Exception | None = None
    ) -> None:
        self.entries = entries or {}
        self.fail = fail
        self.asked: list[CtTuple] = []

    def lookup_many(self, origs: Sequence[CtTuple]) -> list[Answer]:
        self.asked += origs
        if self.fail is not None:
            raise self.fail
        by_reply = {reply: orig for orig, reply in self.entries.items()}
        out = []
        for asked in origs:
            reply = self.entries.get(asked)
            if reply is not None:
                out.append(Answer(0, reply, asked))
            elif asked in by_reply:
                out.append(Answer(0, asked, by_reply[asked]))
            else:
                out.append(Answer(0, errno=2))
        return out


def dnat(
    client: tuple[str, int], service: tuple[str, int], backend: tuple[str, int], proto: int = TCP
) -> dict[CtTuple, CtTuple]:
    orig = CtTuple(proto, packed(client[0]), packed(service[0]), client[1], service[1])
    return {orig: CtTuple(proto, packed(backend[0]), packed(client[0]), backend[1], client[1])}


def snat(
    client: tuple[str, int], server: tuple[str, int], translated: tuple[str, int], proto: int = TCP
) -> dict[CtTuple, CtTuple]:
    orig = CtTuple(proto, packed(client[0]), packed(server[0]), client[1], server[1])
    return {orig: CtTuple(proto, packed(server[0]), packed(translated[0]), server[1],
                          translated[1])}  # fmt: skip


def drainer(reader: Reader, conntrack: Conntrack | None, idle: float = 1e9, **kw: Any) -> Drainer:
    pairing = NatPairing(conntrack, **kw) if conntrack is not None else None
    return Drainer(reader, Clock(), "node-a", idle, DirectionMemory(64), pairing=pairing)  # type: ignore[arg-type]


def drained(d: Drainer) -> list[dict[str, Any]]:
    return [f.to_wire() for f in d.drain().flows]


def lines(d: Drainer) -> list[bytes]:
    """The lines a drain publishes, sorted, each with its times made relative (unix time
    = monotonic + an offset the drain measures, so it differs between two drains)."""
    out: list[bytes] = []
    d.drain_into(out.extend)
    rows = []
    for line in out:
        wire = orjson.loads(line)
        start = wire["start_ns"]
        wire["start_ns"], wire["end_ns"] = 0, wire["end_ns"] - start
        rows.append(orjson.dumps(wire))
    return sorted(rows)


def by_ends(flows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(f["src"], f["sport"], f["dst"], f["dport"]): f for f in flows}


def tcp_halves(fin: bool = True) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """X (the client's requests to the Service) and Y (the backend's replies)."""
    x = entry(
        A, 40000, VIP, 80, packets=6, nbytes=1400, flags=SYN | ACK, first=100, last=800, syn=True
    )
    y_flags = SYN | ACK | (FIN if fin else 0)
    y = entry(B, 8080, A, 40000, packets=4, nbytes=900, flags=y_flags, first=150, last=950)
    return x, y


def test_halves_in_different_chunks_become_one_flow_to_the_backend() -> None:
    x, y = tcp_halves()
    other = [entry(C, 5000 + i, B, 9000, UDP) for i in range(3)]
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    d = drainer(Reader([[x, other[0]], [other[1]], [y, other[2]]]), ct)
    flows = by_ends(drained(d))
    joined = flows[(A, 40000, B, 8080)]
    assert (joined["packets"], joined["bytes"], joined["rpackets"], joined["rbytes"]) == (
        6,
        1400,
        4,
        900,
    )
    assert (joined["nat_dst"], joined["nat_dport"]) == (VIP, 80)
    assert joined["tcp_flags"] == SYN | ACK | FIN and joined["initiator"] is True
    assert (joined["start_ns"], joined["end_ns"]) == (
        100 + joined["start_ns"] - 100,
        joined["end_ns"],
    )
    assert joined["end_ns"] - joined["start_ns"] == 850  # first of X .. last of Y (ticks = ns)
    assert joined["end_reason"] == "end_of_flow_detected"  # Y's FIN: the stronger reason
    assert len(flows) == 4 and (A, 40000, VIP, 80) not in flows and (B, 8080, A, 40000) not in flows
    assert ct.asked == [CtTuple(TCP, packed(A), packed(VIP), 40000, 80)]
    assert d.pairing is not None and d.pairing.take_tally().pairs == 1


def test_a_joined_pair_is_two_map_entries() -> None:
    """The drain reports the map's occupancy (map_entries), not its joined records."""
    x, y = tcp_halves()
    d = drainer(Reader([[x, y]]), Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080))))
    out: list[bytes] = []
    assert d.drain_into(out.extend) == 2
    assert len(out) == 1


def test_answers_are_cached_for_the_life_of_the_flow_and_x_alone_is_rewritten() -> None:
    x, y = tcp_halves(fin=False)
    x_later = entry(A, 40000, VIP, 80, packets=2, nbytes=104, flags=ACK)
    x_end = entry(A, 40000, VIP, 80, packets=1, nbytes=52, flags=ACK | FIN)
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    d = drainer(Reader([[x, y]], [[x_later]], [[x_end]], [[x_later]]), ct)
    drained(d)
    (alone,) = drained(d)  # the replies were not in this interval: X alone, rewritten
    assert (alone["dst"], alone["dport"], alone["packets"], alone["rpackets"]) == (B, 8080, 2, 0)
    assert (alone["nat_dst"], alone["nat_dport"]) == (VIP, 80)
    assert len(ct.asked) == 1  # from the cache
    (last,) = drained(d)
    assert last["dst"] == B and last["end_reason"] == "end_of_flow_detected"
    # The FIN ended the flow: its answer is forgotten; a later flow with the same tuple
    # (port reuse) is not rewritten from the old entry: conntrack is asked again (the
    # Service address is a known DNAT'ed one), and has no entry for it now.
    ct.entries = {}
    (reused,) = drained(d)
    assert (reused["dst"], "nat_dst" in reused) == (VIP, False)
    assert len(ct.asked) == 2


def test_same_client_end_without_nat_stays_as_it_is() -> None:
    """An unconnected UDP socket sending to C and receiving from B (no NAT): conntrack
    has no DNAT for it, so both flows are published exactly as without pairing."""
    chunk = [entry(A, 5353, C, 53, UDP), entry(B, 53, A, 5353, UDP)]
    orig = CtTuple(UDP, packed(A), packed(C), 5353, 53)
    ct = Conntrack({orig: CtTuple(UDP, packed(C), packed(A), 53, 5353)})  # plain entry
    d = drainer(Reader([chunk], [chunk]), ct)
    assert lines(d) == lines(drainer(Reader([chunk]), None))
    assert ct.asked == [orig]
    assert d.pairing is not None and d.pairing.take_tally().misses == 1
    assert lines(d) == lines(drainer(Reader([chunk]), None))
    assert ct.asked == [orig]  # the negative answer is cached too


def test_snat_as_well_is_not_paired() -> None:
    """Masquerade after DNAT: the replies go to the node, not to the client."""
    x, y = tcp_halves()
    orig = CtTuple(TCP, packed(A), packed(VIP), 40000, 80)
    ct = Conntrack({orig: CtTuple(TCP, packed(B), packed("10.0.0.1"), 8080, 61000)})
    d = drainer(Reader([[x, y]]), ct)
    assert lines(d) == lines(drainer(Reader([[x, y]]), None))


def test_replies_without_their_requests_are_left_alone_and_not_looked_up() -> None:
    _, y = tcp_halves()
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    d = drainer(Reader([[y, entry(C, 1, B, 2, UDP)]]), ct)
    assert lines(d) == lines(drainer(Reader([[y, entry(C, 1, B, 2, UDP)]]), None))
    assert ct.asked == []


def test_one_way_flows_sharing_no_end_cause_no_lookup_and_no_change() -> None:
    """The collector benchmark's workload: 8 sockets spraying one-way datagrams."""
    flows = [entry(A, 40000 + i % 8, B, 1024 + i, UDP) for i in range(600)]
    chunks = [flows[i : i + 128] for i in range(0, 600, 128)]
    ct = Conntrack()
    d = drainer(Reader(chunks), ct)
    assert lines(d) == lines(drainer(Reader(chunks), None))
    assert ct.asked == [] and d.pairing is not None and d.pairing.held == []


@pytest.mark.parametrize(
    "failure", [ConntrackUnavailable(1, "ctnetlink request"), ConntrackError("garbage")]
)
def test_conntrack_failing_publishes_unpaired_and_logs_once(
    failure: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = tcp_halves()
    x2, y2 = entry(A, 40001, VIP, 80), entry(B, 8080, A, 40001)
    ct = Conntrack(fail=failure)
    d = drainer(Reader([[x, y]], [[x2, y2]]), ct)
    with caplog.at_level(logging.WARNING):
        assert lines(d) == lines(drainer(Reader([[x, y]]), None))
        assert lines(d) == lines(drainer(Reader([[x2, y2]]), None))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert d.pairing is not None
    if isinstance(failure, ConntrackUnavailable):
        assert "NAT pairing is off" in warnings[0].getMessage()
        assert d.pairing.enabled is False and len(ct.asked) == 1  # not asked again


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (ConntrackFailed(errno.ETIMEDOUT, "ctnetlink request"), "timeout"),
        (ConntrackFailed(errno.ENOBUFS, "ctnetlink request"), "enobufs"),
        (ConntrackUnavailable(errno.ETIMEDOUT, "ctnetlink request"), "timeout"),
        (ConntrackError("garbage"), "malformed"),
    ],
)
def test_a_failed_lookup_costs_one_drain_its_pairs_and_is_counted(
    failure: Exception, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a refusal (EPERM, no ctnetlink) turns pairing off; a timeout, lost answers
    (ENOBUFS) or a garbled answer leave that drain's flows unpaired, and the next drain
    asks again."""
    x, y = tcp_halves(fin=False)
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)), fail=failure)
    d = drainer(Reader([[x, y]], [[x, y]], [[x, y]]), ct)
    assert d.pairing is not None
    metrics = CollectorMetrics.create(CollectorRegistry())
    with caplog.at_level(logging.WARNING):
        assert lines(d) == lines(drainer(Reader([[x, y]]), None))
        ct.fail = None
        assert [len(drained(d)) for _ in range(2)] == [1, 1]
    metrics.observe_nat(d.pairing.take_tally())
    assert d.pairing.enabled
    assert metrics.conntrack_errors.labels(reason)._value.get() == 1
    assert [r.kind for r in caplog.records if r.levelno == logging.WARNING] == [
        f"conntrack-{reason}"
    ]


def test_two_way_flows_are_never_held() -> None:
    chunk = [two_way(A, 40000, B, 80), two_way(B, 80, A, 40000), entry(C, 1, A, 40000, UDP)]
    ct = Conntrack()
    d = drainer(Reader([chunk]), ct)
    assert lines(d) == lines(drainer(Reader([chunk]), None))
    assert ct.asked == []


def test_ipv6_and_udp_halves_are_joined() -> None:
    a6, vip6, b6 = "fd00::5", "fd00:96::10", "fd00:1::7"
    x = entry(a6, 5000, vip6, 53, UDP, packets=2, nbytes=130)
    y = entry(b6, 5353, a6, 5000, UDP, packets=2, nbytes=250)
    ct = Conntrack(dnat((a6, 5000), (vip6, 53), (b6, 5353), UDP))
    (joined,) = drained(drainer(Reader([[y], [x]]), ct))
    assert RawFlow.from_wire(joined).to_wire() == joined
    assert (joined["src"], joined["dst"], joined["dport"], joined["nat_dst"]) == (
        a6,
        b6,
        5353,
        vip6,
    )
    assert (joined["bytes"], joined["rbytes"], joined["initiator"]) == (130, 250, False)


def test_paired_line_is_what_rawflow_writes() -> None:
    x, y = tcp_halves()
    out: list[bytes] = []
    drainer(Reader([[x, y]]), Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))).drain_into(
        out.extend
    )
    (line,) = out
    assert line == orjson.dumps(RawFlow.from_wire(orjson.loads(line)).to_wire()) + b"\n"


def test_replies_alone_of_a_known_dnat_are_oriented_client_to_backend() -> None:
    """The client silent for an interval (a server pushing): the backend's half alone
    carries the same 5-tuple as every other report, the NAT keys, reverse counters."""
    x, y = tcp_halves(fin=False)
    y_later = entry(B, 8080, A, 40000, packets=3, nbytes=3000, flags=ACK)
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    d = drainer(Reader([[x, y]], [[y_later, entry(C, 1, B, 2, UDP)]]), ct)
    drained(d)
    flows = by_ends(drained(d))
    alone = flows[(A, 40000, B, 8080)]
    assert (alone["packets"], alone["rpackets"], alone["rbytes"]) == (0, 3, 3000)
    assert (alone["nat_dst"], alone["nat_dport"], alone["initiator"]) == (VIP, 80, False)
    assert len(ct.asked) == 1 and (C, 1, B, 2) in flows


def test_answers_older_than_the_ttl_are_asked_again() -> None:
    """After the conntrack entry of a reused tuple changed (another backend), the old
    answer is not used: answers live ANSWER_TTL_NS at most (0 here)."""
    x, y = tcp_halves(fin=False)
    y2 = entry(C, 8080, A, 40000, packets=4, nbytes=900)
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    d = drainer(Reader([[x, y]], [[x, y2]]), ct, ttl_ns=0)
    assert by_ends(drained(d))[(A, 40000, B, 8080)]["nat_dst"] == VIP
    ct.entries = dnat((A, 40000), (VIP, 80), (C, 8080))
    flows = by_ends(drained(d))
    assert flows[(A, 40000, C, 8080)]["rpackets"] == 4 and len(flows) == 1
    assert len(ct.asked) == 2


def candidates_unnarrowed(
    pairing: NatPairing, chunks: list[tuple[bytes, bytes]]
) -> list[list[int]]:
    """NatPairing.candidates' definition, its end passes over every entry of every chunk
    (what it did before narrowing them to the one-way flows at shared addresses)."""
    senders: set[Any] = set()
    for keys, values in chunks:
        senders |= chunk_senders(keys, values)
    known = set(pairing._nat_senders)
    shared = senders & known
    for keys, values in chunks:
        shared |= chunk_receivers(keys, values) & senders
        shared |= chunk_receivers(keys, values) & known
        # the receiving ends at addresses clients dialled before (a DNAT'ed Service), the
        # sending ends at clients SNAT'ed before
        shared |= {e for e in chunk_receivers(keys, values) if e[0] in pairing._dialled}
        shared |= {e for e in chunk_senders(keys, values) if e[0] in pairing._masqueraded}
    return [chunk_touching(keys, values, shared) for keys, values in chunks]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from([A, B, C, VIP, E, N]), st.sampled_from([A, B, C, VIP, E, N]),
                      st.integers(1, 3), st.integers(1, 3),
                      st.sampled_from(["fwd", "rev", "both"])),
            max_size=12,
        ),
        min_size=1, max_size=4,
    ),
    st.booleans(),
)  # fmt: skip
def test_candidates_narrowed_to_shared_addresses_hold_what_the_end_passes_would(
    chunks_rows: list[list[Any]], primed: bool
) -> None:
    """Narrowing the end passes to the one-way flows at shared addresses (chunk_near,
    take) changes nothing: the same positions as those passes over every entry, with and
    without known NAT'ed ends and a dialled Service address from an earlier drain."""
    pairing = NatPairing(Conntrack({**dnat((A, 2), (VIP, 80), (B, 8080), UDP),
                                    **snat((C, 3), (E, 443), (N, 9), UDP)}))  # fmt: skip
    if primed:  # an earlier drain cached a DNAT (client end A:2) and an SNAT (client C)
        x, y = entry(A, 2, VIP, 80, UDP), entry(B, 8080, A, 2, UDP)
        sx, sy = entry(C, 3, E, 443, UDP), entry(E, 443, N, 9, UDP)
        Drainer(
            Reader([[x, y, sx, sy]]), Clock(), "n", 1e9, DirectionMemory(8), pairing=pairing
        ).drain()  # type: ignore[arg-type]
        assert pairing._nat_senders and pairing._dialled and pairing._masqueraded
    chunks = []
    for rows in chunks_rows:
        made = []
        for src, dst, sport, dport, way in rows:
            k, v = entry(src, sport, dst, dport, UDP)
            value = list(abi.FLOW_VALUE.unpack(v))
            value[2:6] = {"fwd": [5, 0, 50, 0], "rev": [0, 5, 0, 50], "both": [5, 5, 50, 50]}[way]
            made.append((k, abi.FLOW_VALUE.pack(*value)))
        chunks.append((b"".join(k for k, _ in made), b"".join(v for _, v in made)))
    assert pairing.candidates(chunks) == candidates_unnarrowed(pairing, chunks)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([A, B, C, VIP]), st.sampled_from([A, B, C, VIP]),
                  st.integers(1, 3), st.integers(1, 3), st.sampled_from(["fwd", "rev", "both"]),
                  st.sampled_from([UDP, UDP, TCP, ICMP])),
        min_size=1, max_size=20,
    ),
    st.sampled_from(["mixed", "fwd", "rev"]),
)  # fmt: skip
def test_prefilter_passes_agree_with_their_definition(rows: list[Any], only: str) -> None:
    """chunk_addresses / chunk_senders / chunk_receivers / chunk_touching (C-level
    passes, with fast paths for chunks going one way only) against a plain loop. The
    address gate counts only protocols with ports (an ICMP error back does not open it)."""
    made = []
    for src, dst, sport, dport, way, proto in rows:
        way = way if only == "mixed" else only
        k, v = entry(src, sport, dst, dport, proto)
        key, value = abi.FLOW_KEY.unpack(k), list(abi.FLOW_VALUE.unpack(v))
        value[2:6] = {"fwd": [5, 0, 50, 0], "rev": [0, 5, 0, 50], "both": [5, 5, 50, 50]}[way]
        made.append((key, abi.FLOW_KEY.pack(*key), abi.FLOW_VALUE.pack(*value), value))
    keys = b"".join(m[1] for m in made)
    values = b"".join(m[2] for m in made)
    senders, receivers, ends_s, ends_r = set(), set(), set(), set()
    for key, _, _, value in made:
        lo = (*struct.unpack("<QQ", key[0]), key[2], key[4])
        hi = (*struct.unpack("<QQ", key[1]), key[3], key[4])
        if value[3] == 0 or value[2] == 0:
            s, r = (lo, hi) if value[3] == 0 else (hi, lo)
            if key[4] != ICMP:
                senders.add(s[0])
                receivers.add(r[0])
            ends_s.add(s)
            ends_r.add(r)
    assert chunk_addresses(keys, values) == (senders, receivers)
    assert chunk_senders(keys, values) == ends_s
    assert chunk_receivers(keys, values) == ends_r
    touching = [i for i, (key, _, _, value) in enumerate(made) if (value[2] == 0 or value[3] == 0)
                and ({(*struct.unpack("<QQ", key[0]), key[2], key[4]),
                      (*struct.unpack("<QQ", key[1]), key[3], key[4])} & ends_s)]  # fmt: skip
    assert chunk_touching(keys, values, ends_s) == touching


# ---------------------------------------------------------------- SNAT (masquerade)


def snat_halves(fin: bool = True) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """X (the pod's requests, counted at its veth) and Y (the outside's replies, counted
    at the uplink before they are un-NATed: to the node's address and port)."""
    x = entry(A, 40000, E, 443, packets=6, nbytes=1400, flags=SYN | ACK, first=100, last=800,
              syn=True)  # fmt: skip
    y_flags = SYN | ACK | (FIN if fin else 0)
    y = entry(E, 443, N, 61000, packets=4, nbytes=900, flags=y_flags, first=150, last=950)
    return x, y


def test_snat_halves_in_different_chunks_become_one_flow_to_the_outside() -> None:
    x, y = snat_halves()
    other = [entry(C, 5000 + i, B, 9000, UDP) for i in range(3)]
    ct = Conntrack(snat((A, 40000), (E, 443), (N, 61000)))
    d = drainer(Reader([[x, other[0]], [other[1]], [y, other[2]]]), ct)
    flows = by_ends(drained(d))
    joined = flows[(A, 40000, E, 443)]
    assert (joined["packets"], joined["bytes"], joined["rpackets"], joined["rbytes"]) == (
        6, 1400, 4, 900,
    )  # fmt: skip
    assert (joined["nat_src"], joined["nat_sport"]) == (N, 61000) and "nat_dst" not in joined
    assert joined["tcp_flags"] == SYN | ACK | FIN and joined["initiator"] is True
    assert joined["end_ns"] - joined["start_ns"] == 850  # first of X .. last of Y
    assert joined["end_reason"] == "end_of_flow_detected"
    assert len(flows) == 4 and (E, 443, N, 61000) not in flows
    # One lookup: the replies' half is asked (the pod's half went to its source end); the
    # kernel finds the entry by its reply direction, whose original tuple is X.
    assert ct.asked == [CtTuple(TCP, packed(E), packed(N), 443, 61000)]
    assert d.pairing is not None
    tally = d.pairing.take_tally()
    assert (tally.pairs, tally.misses, tally.lookups) == (1, 0, 1)


def test_snat_halves_alone_in_later_drains_are_rewritten_from_the_cache() -> None:
    x, y = snat_halves(fin=False)
    x_later = entry(A, 40000, E, 443, packets=2, nbytes=104, flags=ACK)
    y_later = entry(E, 443, N, 61000, packets=3, nbytes=3000, flags=ACK)
    unrelated = entry(C, 1, B, 2, UDP)
    ct = Conntrack(snat((A, 40000), (E, 443), (N, 61000)))
    d = drainer(Reader([[x, y]], [[x_later, unrelated]], [[y_later, unrelated]]), ct)
    drained(d)
    flows = by_ends(drained(d))  # the pod's half alone
    alone = flows[(A, 40000, E, 443)]
    assert (alone["packets"], alone["bytes"], alone["rpackets"]) == (2, 104, 0)
    assert (alone["nat_src"], alone["nat_sport"]) == (N, 61000) and (C, 1, B, 2) in flows
    flows = by_ends(drained(d))  # the replies alone: oriented pod → outside
    alone = flows[(A, 40000, E, 443)]
    assert (alone["packets"], alone["rpackets"], alone["rbytes"]) == (0, 3, 3000)
    assert (alone["nat_src"], alone["nat_sport"], alone["initiator"]) == (N, 61000, False)
    assert len(ct.asked) == 1 and len(flows) == 2
    assert d.pairing is not None and d.pairing.take_tally().rewritten == 2


def test_ipv6_udp_snat_halves_are_joined() -> None:
    a6, e6, n6 = "fd00::5", "2001:db8::9", "fd00:ffff::1"
    x = entry(a6, 5000, e6, 53, UDP, packets=2, nbytes=130)
    y = entry(e6, 53, n6, 20000, UDP, packets=2, nbytes=250)
    ct = Conntrack(snat((a6, 5000), (e6, 53), (n6, 20000), UDP))
    (joined,) = drained(drainer(Reader([[y], [x]]), ct))
    assert RawFlow.from_wire(joined).to_wire() == joined
    assert (joined["src"], joined["sport"], joined["dst"], joined["dport"]) == (a6, 5000, e6, 53)
    assert (joined["nat_src"], joined["nat_sport"], joined["bytes"], joined["rbytes"]) == (
        n6, 20000, 130, 250,
    )  # fmt: skip


def test_snat_paired_line_is_what_rawflow_writes() -> None:
    x, y = snat_halves()
    out: list[bytes] = []
    drainer(Reader([[x, y]]), Conntrack(snat((A, 40000), (E, 443), (N, 61000)))).drain_into(
        out.extend
    )
    (line,) = out
    assert line == orjson.dumps(RawFlow.from_wire(orjson.loads(line)).to_wire()) + b"\n"


def test_shared_outside_end_without_snat_stays_as_it_is() -> None:
    """A pod's flow to E and a flow from E to the node that conntrack does not tie to it
    (another connection of the node's own, no NAT): nothing is changed."""
    x, y = snat_halves()
    plain = {CtTuple(TCP, packed(N), packed(E), 61000, 443): CtTuple(
        TCP, packed(E), packed(N), 443, 61000)}  # fmt: skip
    for entries in ({}, plain):
        ct = Conntrack(entries)
        d = drainer(Reader([[x, y]]), ct)
        assert lines(d) == lines(drainer(Reader([[x, y]]), None))
        assert ct.asked == [CtTuple(TCP, packed(E), packed(N), 443, 61000)]
        assert d.pairing is not None and d.pairing.take_tally().misses == 1


def test_prefilter_holds_both_halves_of_a_snat_and_nothing_else() -> None:
    """A one-way flow is held when its destination end is another one-way flow's source
    end (the SNAT shape) — both of them, from any chunks — and no other entry is."""
    x, y = snat_halves()
    spray = [entry(A, 40000 + i % 8, B, 1024 + i, UDP) for i in range(300)]
    chunks = [[*spray[:100], x], spray[100:200], [y, *spray[200:]]]
    raw = [(b"".join(k for k, _ in c), b"".join(v for _, v in c)) for c in chunks]
    pairing = NatPairing(Conntrack())
    assert pairing.candidates(raw) == [[100], [], [0]]
    bare = [(b"".join(k for k, _ in c), b"".join(v for _, v in c)) for c in (spray,)]
    assert pairing.candidates(bare) == [[]]


def test_requests_alone_to_a_dnated_address_are_asked_and_rewritten() -> None:
    """A connection split across two drains (its requests in one, its replies only in
    the next) is not published half unpaired when its Service address is known from an
    earlier DNAT'ed connection — even one that has ended, to another port: the requests
    alone are looked up and rewritten to the backend, then the halves joined."""
    x, y = tcp_halves()  # A:40000 → VIP:80, ended (FIN): its answer is forgotten
    ux = entry(A, 5000, VIP, 53, UDP, packets=1, nbytes=60)
    ux_more = entry(A, 5000, VIP, 53, UDP, packets=2, nbytes=120)
    uy = entry(B, 5353, A, 5000, UDP, packets=3, nbytes=180)
    ct = Conntrack({**dnat((A, 40000), (VIP, 80), (B, 8080)),
                    **dnat((A, 5000), (VIP, 53), (B, 5353), UDP)})  # fmt: skip
    d = drainer(Reader([[x, y]], [[ux]], [[ux_more, uy]]), ct)
    drained(d)
    (alone,) = drained(d)
    assert (alone["src"], alone["sport"], alone["dst"], alone["dport"]) == (A, 5000, B, 5353)
    assert (alone["nat_dst"], alone["nat_dport"], alone["packets"]) == (VIP, 53, 1)
    (joined,) = drained(d)
    assert (joined["dst"], joined["dport"], joined["nat_dst"]) == (B, 5353, VIP)
    assert (joined["packets"], joined["rpackets"]) == (2, 3)
    assert ct.asked[1:] == [CtTuple(UDP, packed(A), packed(VIP), 5000, 53)]  # then cached


def test_one_way_flows_to_other_addresses_are_not_asked_alone() -> None:
    """Only addresses conntrack DNAT'ed are remembered: a lone one-way flow elsewhere (to
    C, or to the backend B itself) is neither held nor looked up."""
    x, y = tcp_halves()
    ct = Conntrack(dnat((A, 40000), (VIP, 80), (B, 8080)))
    lone = [entry(A, 6000, C, 53, UDP), entry(A, 6001, B, 8080, UDP)]
    d = drainer(Reader([[x, y]], [lone]), ct)
    drained(d)
    flows = by_ends(drained(d))
    assert set(flows) == {(A, 6000, C, 53), (A, 6001, B, 8080)}
    assert len(ct.asked) == 1


def test_requests_alone_from_an_snated_client_are_asked_and_rewritten() -> None:
    """The SNAT analogue: a pod whose connections conntrack masqueraded before (an ended
    TCP connection) sends a UDP exchange split across two drains; its requests alone are
    looked up and published with the translated source, then the halves joined."""
    x, y = snat_halves()  # A:40000 → E:443, ended (FIN)
    ux = entry(A, 5000, E, 53, UDP, packets=1, nbytes=60)
    ux_more = entry(A, 5000, E, 53, UDP, packets=2, nbytes=120)
    uy = entry(E, 53, N, 62000, UDP, packets=3, nbytes=180)
    ct = Conntrack({**snat((A, 40000), (E, 443), (N, 61000)),
                    **snat((A, 5000), (E, 53), (N, 62000), UDP)})  # fmt: skip
    d = drainer(Reader([[x, y]], [[ux]], [[ux_more, uy]]), ct)
    drained(d)
    (alone,) = drained(d)
    assert (alone["src"], alone["sport"], alone["dst"], alone["dport"]) == (A, 5000, E, 53)
    assert (alone["nat_src"], alone["nat_sport"], alone["packets"]) == (N, 62000, 1)
    (joined,) = drained(d)
    assert (joined["nat_src"], joined["nat_sport"]) == (N, 62000)
    assert (joined["packets"], joined["rpackets"]) == (2, 3)
    assert ct.asked[1:] == [CtTuple(UDP, packed(A), packed(E), 5000, 53)]  # then cached
