"""Join the two one-way halves of a connection NAT'ed on this node into one flow.

The TC hooks count a packet before netfilter rewrites it, so a connection NAT'ed by the
node is counted as two one-way flows there: X, the client's requests as it sent them
(conntrack's *original* tuple), and Y, the replies as they arrived, before they were
un-NATed (conntrack's *reply* tuple, source → destination). Two cases:

- **DNAT** (kube-proxy: ClusterIP, NodePort). A pod A connects to a Service address
  VIP:v, rewritten to a backend B:t: X = A:s → VIP:v, Y = B:t → A:s. X and Y become one
  raw flow A:s → B:t carrying the address the client dialled in ``nat_dst``/``nat_dport``
  — the same 5-tuple the backend's node reports, so the enricher's cross-node dedup and
  Community ID agree.
- **SNAT** (masquerade of a pod's connection leaving the node). A pod A connects to an
  outside address E:e, its source rewritten to the node's N:n: X = A:s → E:e (counted at
  the pod's veth), Y = E:e → N:n (counted at the uplink). X and Y become one raw flow
  A:s → E:e carrying the translated source in ``nat_src``/``nat_sport``, so the pod's
  received bytes are the pod's, not a one-way flow of the node's.

In both, the joined flow is original source → reply source, forward counters from X,
reverse from Y. A connection both DNAT'ed and SNAT'ed is left unpaired (see
:func:`_replies_of`).

Exact, no heuristics: a flow is changed only when conntrack says it was NAT'ed. Cheap
when there is nothing to pair: the drain reads the whole map first (raw bytes only), and
a prefilter made of C-level passes over each chunk's bytes (strided ``memoryview``
slices, ``zip``/``compress``/set intersection: no Python code per entry) finds the
entries with an end that one one-way flow of the same drain sends from and another
receives at — the client end A:s for DNAT (X sends from it, Y returns to it), the outside
end E:e for SNAT (X goes to it, Y comes from it) — or an end of a flow known to be NAT'ed
from an earlier drain. Its first gate compares addresses only (a cheap pass: most drains
stop there); ends are compared only when an address both sends and receives one-way
flows, and only among the one-way flows at such addresses. Only the entries touching
those ends are held back and rendered at the end of the drain; every other entry is
rendered by :meth:`Drainer.render_chunk` exactly as without pairing. Of the held ones,
a flow that another goes to the source end of is looked up (X for DNAT, Y for SNAT: the
kernel finds an entry by either direction and answers with both tuples), in one batch;
answers are cached while the flow lasts, 20 s at most, and asked again when a drain
contradicts one (the client's end gets replies, none from the end the answer names).
One-way flows that share no end with another one-way flow (the collector benchmark's
workload) cause no lookup.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import not_
from typing import Any, Protocol, TypeVar

import orjson
from flowscope.collector import abi
from flowscope.collector.conntrack import (
    PORTED,
    REFUSED,
    Answer,
    ConntrackError,
    ConntrackFailed,
    ConntrackUnavailable,
    CtTuple,
    failure_reason,
)
from flowscope.collector.draining import (
    K_ADDR_HI,
    K_ADDR_LO,
    K_FAMILY,
    K_PORT_HI,
    K_PORT_LO,
    K_PROTO,
    TCP_FIN,
    TCP_RST,
    V_BYTES0,
    V_BYTES1,
    V_FLAGS,
    V_FWD,
    V_INIT,
    V_PKT0,
    V_PKT1,
    DirectionMemory,
    DrainContext,
    raw_flow_wire,
)
from flowscope.core.logs import RateLimitedLog

log = logging.getLogger("flowscope.collector.nat_pairing")

# An end as the prefilter sees it: the address's two native u64 halves, port, protocol.
# Only a filter: the family is left out (the exact stage compares it).
PreEnd = tuple[int, int, int, int]
# An end exactly: (proto, family, packed address as in the key: 16 bytes, port).
End = tuple[int, int, bytes, int]
# An address exactly: (family, packed address as in the key).
Address = tuple[int, bytes]
K = TypeVar("K")
# A NAT'ed client flow's replies as the TC hooks count them, before they are un-NATed:
# (sending end, receiving end) — conntrack's reply tuple.
Replies = tuple[End, End]
# Records keep the stronger reason: a connection is idle only when both halves are.
_REASON_RANK = {"idle_timeout": 0, "active_timeout": 1, "end_of_flow_detected": 2, "forced_end": 3}
# How long an address conntrack NAT'ed is remembered after the last answer that named it,
# and how many are, per kind: the addresses clients dialled that were DNAT'ed (Service
# addresses) and the clients whose source was SNAT'ed (pods that reach the outside). A
# one-way flow to the first or from the second is asked about even alone in its drain
# (its replies' half may be in the next one), so that a connection split across two
# drains is not published half unpaired. Both are stable and few next to the answers.
KNOWN_TTL_NS = 600 * 10**9
KNOWN_MAX = 4096
# Reports after which a connection is over: its cached answer is dropped. (An idle
# report is not one: the other half may go on; the LRU bound and the TTL handle those.)
_ENDED = frozenset({"end_of_flow_detected", "forced_end"})
# How long an answer is used without asking again. A reused tuple maps to the same
# conntrack entry, hence the same backend, while that entry lives; a UDP entry outlives
# the last packet by nf_conntrack_udp_timeout (30 s by default), and the packets behind
# an answer were at most one active timeout older than it: 20 s stays inside.
ANSWER_TTL_NS = 20_000_000_000
_KEY_SIZE = abi.FLOW_KEY.size
_VALUE_SIZE = abi.FLOW_VALUE.size
_HALVES = struct.Struct("<QQ")


class Lookup(Protocol):
    """The conntrack seam (:class:`~flowscope.collector.conntrack.Conntrack`)."""

    def lookup_many(self, origs: Sequence[CtTuple]) -> list[Answer]: ...


@dataclass(slots=True)
class NatTally:
    """What pairing did since the last :meth:`NatPairing.take_tally` (for metrics)."""

    lookups: int = 0  # tuples asked to conntrack
    pairs: int = 0  # X and Y joined into one flow
    rewritten: int = 0  # one half alone given the joined 5-tuple (the other not in the drain)
    misses: int = 0  # asked, and conntrack had no NAT to pair (no entry, not NAT'ed, or both)
    # batches of lookups that failed, by reason (timeout, enobufs, socket, malformed):
    # their flows were published unpaired
    errors: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------- prefilter (C-level passes)


def _ends(
    keys: bytes, values: bytes
) -> tuple[Iterator[PreEnd], Iterator[PreEnd], list[bool], list[bool]]:
    """(lo ends, hi ends, lo→hi-only selectors, hi→lo-only selectors) of a chunk.

    Strided slices of ``memoryview`` casts pull one field of every entry out at C speed:
    the key is 5 u64 / 20 u16 / 40 bytes (address halves at u64 0-1 and 2-3, ports at
    u16 16 and 17, protocol at byte 36), the value 8 u64 (packets at 2 and 3).
    """
    raw = memoryview(keys)
    q, h = raw.cast("Q"), raw.cast("H")
    v = memoryview(values).cast("Q")
    proto = raw[36::_KEY_SIZE].tolist()
    lo = zip(q[0::5].tolist(), q[1::5].tolist(), h[16::20].tolist(), proto, strict=True)
    hi = zip(q[2::5].tolist(), q[3::5].tolist(), h[17::20].tolist(), proto, strict=True)
    lo_only = list(map(not_, v[3::8].tolist()))  # no packet hi→lo
    hi_only = list(map(not_, v[2::8].tolist()))
    return lo, hi, lo_only, hi_only


def chunk_addresses(keys: bytes, values: bytes) -> tuple[set[int], set[int]]:
    """(sending, receiving) addresses of a chunk's one-way flows of a protocol with ports
    (``PORTED``: only those are DNAT'ed and looked up), each as its first 8 bytes (an
    IPv4 address whole, an IPv6 address's /64 prefix): the first, cheapest gate — in
    most drains no address both sends and receives such flows.

    A chunk whose flows all went one way in the same key order and all have ports (the
    benchmark's: one pod's sockets to another pod's ports) is two set builds; other
    chunks select the flows with ``compress`` (~85 ns per entry in all, against ~35).
    Leaving out the other protocols keeps ICMP errors from passing the gate: a UDP
    sender to closed ports gets one-way "port unreachable" flows back (the benchmark
    does), which made its receiver an address that both sends and receives.
    """
    raw = memoryview(keys)
    q = raw.cast("Q")
    v = memoryview(values).cast("Q")
    lo, hi = q[0::5], q[2::5]
    protos = keys[36::_KEY_SIZE]  # one byte per entry (a bytes slice), counted at C speed
    ported = sum(map(protos.count, PORTED)) == len(protos)
    backward = v[3::8].tolist()  # packets hi→lo
    if ported and backward.count(0) == len(backward):  # every flow lo→hi only
        return set(lo), set(hi)
    forward = v[2::8].tolist()
    if ported and forward.count(0) == len(forward):  # every flow hi→lo only
        return set(hi), set(lo)
    lo_only = list(map(not_, backward))
    hi_only = list(map(not_, forward))
    if not ported:
        keep = list(map(PORTED.__contains__, protos))
        lo_only = list(map(bool.__and__, lo_only, keep))
        hi_only = list(map(bool.__and__, hi_only, keep))
    lo_list, hi_list = lo.tolist(), hi.tolist()
    senders = set(compress(lo_list, lo_only))
    senders.update(compress(hi_list, hi_only))
    receivers = set(compress(hi_list, lo_only))
    receivers.update(compress(lo_list, hi_only))
    return senders, receivers


def chunk_near(keys: bytes, values: bytes, addresses: set[int]) -> list[int]:
    """Positions of a chunk's one-way flows with an address (first 8 bytes, as in
    :func:`chunk_addresses`) in ``addresses``: a set test per end (C-level), then the
    one-way test for the entries found only (half the cost of testing every entry)."""
    q = memoryview(keys).cast("Q")
    lo, hi = q[0::5].tolist(), q[2::5].tolist()
    contains = addresses.__contains__
    found = compress(range(len(lo)), map(bool.__or__, map(contains, lo), map(contains, hi)))
    v = memoryview(values).cast("Q")
    forward, backward = v[2::8], v[3::8]  # packets lo→hi, hi→lo
    return [i for i in found if not forward[i] or not backward[i]]


def take(keys: bytes, values: bytes, positions: list[int]) -> tuple[bytes, bytes]:
    """The (keys, values) bytes of the entries at ``positions``, in that order."""
    k, v = _KEY_SIZE, _VALUE_SIZE
    return (
        b"".join([keys[i * k : i * k + k] for i in positions]),
        b"".join([values[i * v : i * v + v] for i in positions]),
    )


def chunk_senders(keys: bytes, values: bytes) -> set[PreEnd]:
    """The sending ends of a chunk's one-way flows."""
    lo, hi, lo_only, hi_only = _ends(keys, values)
    senders = set(compress(lo, lo_only))
    senders.update(compress(hi, hi_only))
    return senders


def chunk_receivers(keys: bytes, values: bytes) -> set[PreEnd]:
    """The receiving ends of a chunk's one-way flows."""
    lo, hi, lo_only, hi_only = _ends(keys, values)
    found = set(compress(hi, lo_only))
    found.update(compress(lo, hi_only))
    return found


def chunk_touching(keys: bytes, values: bytes, ends: set[PreEnd]) -> list[int]:
    """Positions of a chunk's one-way flows with either end in ``ends``."""
    lo, hi, lo_only, hi_only = _ends(keys, values)
    lo_in = map(ends.__contains__, lo)
    hi_in = map(ends.__contains__, hi)
    one_way = map(bool.__or__, lo_only, hi_only)
    touching = map(bool.__or__, lo_in, hi_in)
    return list(compress(range(len(lo_only)), map(bool.__and__, one_way, touching)))


def split_chunk(
    keys: bytes, values: bytes, held: list[int]
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(keys, values) without the ``held`` positions (ascending), and the held entries'
    (key bytes, value bytes)."""
    kept_keys, kept_values, out = [], [], []
    start = 0
    for i in held:
        kept_keys.append(keys[start * _KEY_SIZE : i * _KEY_SIZE])
        kept_values.append(values[start * _VALUE_SIZE : i * _VALUE_SIZE])
        out.append(
            (
                keys[i * _KEY_SIZE : (i + 1) * _KEY_SIZE],
                values[i * _VALUE_SIZE : (i + 1) * _VALUE_SIZE],
            )
        )
        start = i + 1
    kept_keys.append(keys[start * _KEY_SIZE :])
    kept_values.append(values[start * _VALUE_SIZE :])
    return b"".join(kept_keys), b"".join(kept_values), out


# ---------------------------------------------------------------- exact stage


@dataclass(slots=True)
class Held:
    """One held-back entry: unpacked, its ends, and its record (wire dict) as published
    without pairing."""

    key: tuple[Any, ...]
    value: tuple[Any, ...]
    sender: End
    receiver: End
    wire: dict[str, Any]
    used: bool = False

    @property
    def proto(self) -> int:
        return int(self.key[K_PROTO])

    def orig(self) -> CtTuple:
        """This flow's tuple (sender → receiver) as conntrack keys it: the original tuple
        when it is a client's requests, the reply tuple when it is the replies."""
        size = 4 if self.key[K_FAMILY] == abi.AF_INET else 16
        return CtTuple(self.proto, self.sender[2][:size], self.receiver[2][:size],
                       self.sender[3], self.receiver[3])  # fmt: skip


def _held(key_bytes: bytes, value_bytes: bytes, memory: DirectionMemory, ctx: DrainContext) -> Held:
    """Unpack a held entry and render its record as :meth:`Drainer.render_chunk` would
    (the same direction-memory step, the same definition: ``raw_flow_wire``)."""
    key = abi.FLOW_KEY.unpack(key_bytes)
    value = abi.FLOW_VALUE.unpack(value_bytes)
    if value[V_INIT] or memory.known or memory.closing:
        ended = ctx.forced or bool(value[V_FLAGS] & (TCP_FIN | TCP_RST))
        fwd, initiator = memory.resolve(key_bytes, value, ended)
    else:
        fwd, initiator = int(value[V_FWD]), False
    proto, family = key[K_PROTO], key[K_FAMILY]
    lo: End = (proto, family, key[K_ADDR_LO], key[K_PORT_LO])
    hi: End = (proto, family, key[K_ADDR_HI], key[K_PORT_HI])
    sender, receiver = (lo, hi) if value[V_PKT1] == 0 else (hi, lo)
    return Held(key, value, sender, receiver, raw_flow_wire(key, value, fwd, initiator, ctx))


def _sent(held: Held) -> tuple[int, int]:
    """(bytes, packets) the sender of a one-way flow sent (the same test as its ends)."""
    v = held.value
    return (v[V_BYTES0], v[V_PKT0]) if v[V_PKT1] == 0 else (v[V_BYTES1], v[V_PKT1])


def _pre_end(end: End) -> PreEnd:
    a0, a1 = _HALVES.unpack(end[2])
    return a0, a1, end[3], end[0]


def _address_key(end: End) -> int:
    """An end's address as the address passes key it (its first 8 bytes, ``PreEnd[0]``)."""
    return int(_HALVES.unpack(end[2])[0])


@dataclass(slots=True)
class NatPairing:
    """The pairing state of one drainer: the conntrack seam, cached answers, counts.

    ``cache``: original tuple of a client's one-way flow → (the ends of its replies'
    flow when it was NAT'ed, or None: nothing to pair; CLOCK_MONOTONIC ns of the answer).
    Used for ``ANSWER_TTL_NS``, dropped at the connection's end (FIN/RST, shutdown),
    LRU-bounded.
    """

    conntrack: Lookup
    capacity: int = 32768  # answers (~0.7 KB each with their indexes)
    ttl_ns: int = ANSWER_TTL_NS
    enabled: bool = True
    cache: OrderedDict[CtTuple, tuple[Replies | None, int]] = field(default_factory=OrderedDict)
    tally: NatTally = field(default_factory=NatTally)
    # Prefilter ends of cached NAT'ed flows (with multiplicity): the client's end, which
    # the requests come from, and the end the replies go to (the same end for DNAT; the
    # translated source for SNAT). Such a flow, or its replies, is held even when the
    # other half is not in the drain, to be rewritten alone.
    _nat_senders: Counter[PreEnd] = field(default_factory=Counter)
    # The replies' ends of each cached NAT → the client's original tuple: the replies'
    # flow, when it comes without the requests.
    _by_reply: dict[Replies, CtTuple] = field(default_factory=dict)
    # Addresses (first 8 bytes, as the prefilter keys them) that clients dialled and
    # conntrack DNAT'ed, and clients' addresses it SNAT'ed → CLOCK_MONOTONIC ns of the
    # last such answer (KNOWN_TTL_NS, LRU-bounded to KNOWN_MAX each): kept past their
    # connections' answers.
    _dialled: OrderedDict[int, int] = field(default_factory=OrderedDict)
    _masqueraded: OrderedDict[int, int] = field(default_factory=OrderedDict)
    # The same addresses whole, (family, address as in the key), for the exact stage: an
    # IPv6 address's first 8 bytes are its /64, which other pods, nodes or Services
    # share, and a lone flow from or to one of those is not worth a lookup.
    _dialled_exact: OrderedDict[Address, int] = field(default_factory=OrderedDict)
    _masqueraded_exact: OrderedDict[Address, int] = field(default_factory=OrderedDict)
    # Entries held back in the current drain: (key bytes, value bytes).
    held: list[tuple[bytes, bytes]] = field(default_factory=list)
    _failures: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, 300.0))

    def take_tally(self) -> NatTally:
        tally, self.tally = self.tally, NatTally()
        return tally

    # ------------------------------------------------------------ the drain's steps

    def candidates(self, chunks: Sequence[tuple[bytes, bytes]]) -> list[list[int]]:
        """Per chunk, the positions to hold back (ascending); all empty when no end is
        the source of one one-way flow and the destination of another (DNAT: the
        client's end; SNAT: the outside end), nor an end of a known NAT'ed flow. Starts
        a drain: forgets what an unfinished one held."""
        self.held.clear()
        addresses, seen = self._shared_addresses(chunks)
        if not addresses:
            return [[] for _ in chunks]
        # The ends are compared among the one-way flows at those addresses only: any
        # pair's two halves are among them, and they are few next to the map (which the
        # end passes would otherwise walk whole, ~500 ns an entry, once any pair exists).
        # A chunk whose one-way flows have none of those addresses is not read again.
        near = [
            []
            if addresses.isdisjoint(sent) and addresses.isdisjoint(received)
            else chunk_near(keys, values, addresses)
            for (keys, values), (sent, received) in zip(chunks, seen, strict=True)
        ]
        if not any(near):
            return [[] for _ in chunks]
        parts = [take(keys, values, at) for (keys, values), at in zip(chunks, near, strict=True)]
        senders: set[PreEnd] = set()
        receivers: set[PreEnd] = set()
        for keys, values in parts:
            senders |= chunk_senders(keys, values)
            receivers |= chunk_receivers(keys, values)
        shared = senders & receivers
        # ends of known NAT'ed flows (a client's requests, or the replies to them)
        shared.update(senders.intersection(self._nat_senders))
        shared.update(receivers.intersection(self._nat_senders))
        # requests to an address known to be DNAT'ed, or from a client known to be
        # SNAT'ed, alone in the drain or not
        dialled, masqueraded = self._dialled, self._masqueraded
        if dialled:
            shared.update(e for e in receivers if e[0] in dialled)
        if masqueraded:
            shared.update(e for e in senders if e[0] in masqueraded)
        if not shared:
            return [[] for _ in chunks]
        return [
            [at[i] for i in chunk_touching(keys, values, shared)] if at else []
            for (keys, values), at in zip(parts, near, strict=True)
        ]

    def _shared_addresses(
        self, chunks: Sequence[tuple[bytes, bytes]]
    ) -> tuple[set[int], list[tuple[set[int], set[int]]]]:
        """(the addresses, first 8 bytes, that send one one-way flow and receive another,
        or that are an address of a known NAT'ed flow and of a one-way flow; per chunk,
        its one-way flows' sending and receiving addresses). The first is needed by any
        pair, and cheap to rule out (most drains find none)."""
        senders: set[int] = set()
        receivers: set[int] = set()
        seen = []
        for keys, values in chunks:
            sent, received = chunk_addresses(keys, values)
            senders |= sent
            receivers |= received
            seen.append((sent, received))
        shared = senders & receivers
        if self._nat_senders:
            clients = {end[0] for end in self._nat_senders}
            shared |= senders & clients
            shared |= receivers & clients
        if self._dialled:
            shared |= receivers.intersection(self._dialled)
        if self._masqueraded:
            shared |= senders.intersection(self._masqueraded)
        return shared, seen

    def hold(self, keys: bytes, values: bytes, positions: list[int]) -> tuple[bytes, bytes]:
        """A chunk without the entries at ``positions`` (ascending), which are held."""
        keys, values, entries = split_chunk(keys, values, positions)
        self.held += entries
        return keys, values

    def resolve(self, memory: DirectionMemory, ctx: DrainContext) -> list[bytes]:
        """The NDJSON lines of the held entries: NAT halves joined or rewritten, the rest
        exactly as they would have been published without pairing."""
        held = [_held(k, v, memory, ctx) for k, v in self.held]
        self.held.clear()
        by_receiver: defaultdict[End, list[Held]] = defaultdict(list)
        for h in held:
            by_receiver[h.receiver].append(h)
        sending = {h.sender for h in held}
        now = ctx.now_mono_ns
        self._expire(now)
        self._learn([h.orig() for h in held if h.proto in PORTED
                     and self._worth_asking(h, by_receiver, sending, now)],
                    by_receiver, now)  # fmt: skip
        lines = []
        for client in held:
            replies = None if client.used else self._nat_of(client.orig(), now)
            if replies is None:
                continue
            reply = next((y for y in by_receiver.get(replies[1], ()) if not y.used
                          and y is not client and y.sender == replies[0]), None)  # fmt: skip
            lines.append(self._joined(client, reply, replies, ctx))
        for h in held:
            orig = None if h.used else self._by_reply.get((h.sender, h.receiver))
            if orig is not None and self._fresh(orig, ctx.now_mono_ns):
                lines.append(self._replies_alone(h, orig, ctx))
        lines += [orjson.dumps(h.wire) + b"\n" for h in held if not h.used]
        return lines

    # ------------------------------------------------------------ exact decisions

    def _worth_asking(
        self, h: Held, by_receiver: dict[End, list[Held]], sending: set[End], now: int
    ) -> bool:
        """Another one-way flow goes to this flow's source end — it is the client's half
        of a DNAT (the replies come back to it), or the replies' half of an SNAT (the
        client's half went to it) — or it goes to a dialled address, or comes from a
        masqueraded client (its replies may be in another drain; for an SNAT, only when
        no flow comes from its destination end: that one, the replies, is asked then),
        or it is a known NAT's client half. Not the replies' half of a NAT known from a
        fresh answer: nothing to ask. ``sending``: the held flows' source ends."""
        known = self._by_reply.get((h.sender, h.receiver))
        if known is not None and self._fresh(known, now):
            return False
        if any(y is not h for y in by_receiver.get(h.sender, ())):
            return True
        if h.receiver[1:3] in self._dialled_exact:
            return True  # to a DNAT'ed address: its replies may be in another drain
        if h.receiver not in sending and h.sender[1:3] in self._masqueraded_exact:
            return True  # from an SNAT'ed client, its replies not in this drain
        cached = self.cache.get(h.orig())
        return cached is not None and cached[0] is not None

    def _expire(self, now: int) -> None:
        """Drop answers older than the TTL from the least recently used end: memory
        follows the connections of the last seconds, not the LRU bound."""
        _expire_known(self._dialled, now)
        _expire_known(self._masqueraded, now)
        _expire_known(self._dialled_exact, now)
        _expire_known(self._masqueraded_exact, now)
        cache = self.cache
        while cache:
            orig, (_, verified) = next(iter(cache.items()))
            if now - verified <= self.ttl_ns:
                return
            self._forget(orig)

    def _fresh(self, orig: CtTuple, now: int) -> bool:
        cached = self.cache.get(orig)
        return cached is not None and now - cached[1] <= self.ttl_ns

    def _learn(self, tuples: list[CtTuple], by_receiver: dict[End, list[Held]], now: int) -> None:
        """Ask conntrack, in one batch, about the tuples without an answer younger than
        ANSWER_TTL_NS, or whose answer this drain contradicts. The kernel finds an entry
        by either direction: a tuple that is an entry's reply direction (the replies'
        half of an SNAT, asked because the client's half went to its source) teaches the
        entry's original tuple, the client's."""
        ask = list(dict.fromkeys(t for t in tuples if not self._fresh(t, now)
                                 or self._contradicted(t, by_receiver)))  # fmt: skip
        answers = self._ask(ask) if ask else None
        if answers is None:  # conntrack failed: nothing learnt, nothing cached
            return
        for asked, answer in zip(ask, answers, strict=True):
            if answer.orig is not None and answer.orig != asked and answer.reply == asked:
                replies = _replies_of(answer.orig, answer)
                if replies is not None:  # the client's tuple; ``asked`` is in _by_reply
                    self._remember(answer.orig, replies, now)
                    continue
            self._remember(asked, _replies_of(asked, answer), now)

    def _contradicted(self, orig: CtTuple, by_receiver: dict[End, list[Held]]) -> bool:
        """A held one-way flow goes to the end the cached replies go to, and none comes
        from the end they come from: the entry was replaced since the answer (kube-proxy
        deletes a UDP Service's entries when its backend goes, and the client's next
        datagram from the same socket gets a new entry, often another backend). Joined
        from the old answer, the requests would name the gone backend and the new one's
        replies stay one-way until the TTL."""
        replies = self.cache[orig][0]
        if replies is None:
            return False
        senders = {y.sender for y in by_receiver.get(replies[1], ())}
        return bool(senders) and replies[0] not in senders

    def _nat_of(self, orig: CtTuple, now: int) -> Replies | None:
        """The replies' ends of a client's tuple that conntrack said was NAT'ed, from an
        answer younger than ANSWER_TTL_NS; else None (not NAT'ed, or not known)."""
        if not self._fresh(orig, now):
            return None  # not asked, or asking failed
        self.cache.move_to_end(orig)
        return self.cache[orig][0]

    def _ask(self, origs: list[CtTuple]) -> list[Answer] | None:
        """The answers; None when conntrack failed (counted, logged rate-limited): this
        drain's flows are published unpaired, and the next drain asks again — unless
        conntrack refused (no permission, no ctnetlink), which turns pairing off."""
        self.tally.lookups += len(origs)
        try:
            return list(self.conntrack.lookup_many(origs))
        except ConntrackUnavailable as e:
            if e.errno not in REFUSED:  # a Lookup reporting a passing failure so
                self._failed(failure_reason(e.errno), e)
                return None
            self.enabled = False
            log.warning(
                f"{e}: NAT pairing is off; NAT'ed connections stay two one-way records",
                extra={"errno": e.errno},
            )
        except ConntrackFailed as e:
            self._failed(e.reason, e)
        except ConntrackError as e:
            self._failed("malformed", e)
        return None

    def _failed(self, reason: str, e: Exception) -> None:
        self.tally.errors[reason] += 1
        self._failures.warning(
            f"conntrack-{reason}", f"{e}: these flows are published unpaired; asked again "
            "at the next drain", reason=reason,
        )  # fmt: skip

    def _remember(self, orig: CtTuple, replies: Replies | None, now: int) -> None:
        if replies is None:
            self.tally.misses += 1
        self._forget(orig)  # an answer asked again: its old one's indexes go first
        self.cache[orig] = (replies, now)
        if replies is not None:
            service, client = _end_of(orig, False), _end_of(orig, True)
            self._nat_senders[_pre_end(client)] += 1
            self._nat_senders[_pre_end(replies[1])] += 1
            self._by_reply[replies] = orig
            if replies[0] != service:  # DNAT: the client dialled this address
                _note(self._dialled, _address_key(service), now)
                _note(self._dialled_exact, (service[1], service[2]), now)
            if replies[1] != client:  # SNAT: this client's source was translated
                _note(self._masqueraded, _address_key(client), now)
                _note(self._masqueraded_exact, (client[1], client[2]), now)
        while len(self.cache) > self.capacity:
            self._forget(next(iter(self.cache)))

    def _forget(self, orig: CtTuple) -> None:
        replies = self.cache.pop(orig, (None, 0))[0]
        if replies is not None:
            if self._by_reply.get(replies) == orig:  # not a newer entry's with that reply
                del self._by_reply[replies]
            for end in (_pre_end(_end_of(orig, True)), _pre_end(replies[1])):
                self._nat_senders[end] -= 1
                if self._nat_senders[end] <= 0:
                    del self._nat_senders[end]

    def _joined(
        self, client: Held, reply: Held | None, replies: Replies, ctx: DrainContext
    ) -> bytes:
        """The one record of a NAT'ed connection: client → the end its replies come from
        (the backend after DNAT, the outside end itself after SNAT), with the NAT keys;
        the reverse counters from the replies' half when it is in this drain."""
        client.used = True
        x = client.wire
        text = ctx.names.text
        sent_bytes, sent_packets = _sent(client)
        src = text(client.sender[2], client.sender[1])
        peer = replies[0]
        wire = dict(x)
        wire.update(
            src=src, sport=client.sender[3], dst=text(peer[2], peer[1]), dport=peer[3],
            bytes=sent_bytes, packets=sent_packets, rbytes=0, rpackets=0,
            initiator=bool(x["initiator"] and x["src"] == src and x["sport"] == client.sender[3]),
        )  # fmt: skip
        if reply is None:
            self.tally.rewritten += 1
        else:
            reply.used = True
            y = reply.wire
            wire["rbytes"], wire["rpackets"] = _sent(reply)
            wire["start_ns"] = min(x["start_ns"], y["start_ns"])
            wire["end_ns"] = max(x["end_ns"], y["end_ns"])
            wire["end_reason"] = max(x["end_reason"], y["end_reason"], key=_REASON_RANK.__getitem__)
            wire["tcp_flags"] = x["tcp_flags"] | y["tcp_flags"]
            self.tally.pairs += 1
        _add_nat_keys(wire, client.orig(), replies, text)
        if wire["end_reason"] in _ENDED:
            self._forget(client.orig())
        return orjson.dumps(wire) + b"\n"

    def _replies_alone(self, reply: Held, orig: CtTuple, ctx: DrainContext) -> bytes:
        """The replies' half of a known NAT'ed connection without the client's half in
        this drain: oriented client → peer like every other report of it, its packets as
        the reverse counters, with the NAT keys."""
        reply.used = True
        text = ctx.names.text
        wire = dict(reply.wire)
        rbytes, rpackets = _sent(reply)
        client = _end_of(orig, True)
        wire.update(
            src=text(client[2], client[1]), sport=client[3],
            dst=text(reply.sender[2], reply.sender[1]), dport=reply.sender[3],
            bytes=0, packets=0, rbytes=rbytes, rpackets=rpackets, initiator=False,
        )  # fmt: skip
        _add_nat_keys(wire, orig, (reply.sender, reply.receiver), text)
        self.tally.rewritten += 1
        if wire["end_reason"] in _ENDED:
            self._forget(orig)
        return orjson.dumps(wire) + b"\n"


def _expire_known(known: OrderedDict[K, int], now: int) -> None:
    """Drop the NAT'ed addresses no answer named for KNOWN_TTL_NS (oldest first)."""
    while known:
        address, seen = next(iter(known.items()))
        if now - seen <= KNOWN_TTL_NS:
            return
        del known[address]


def _note(known: OrderedDict[K, int], address: K, now: int) -> None:
    """Remember a NAT'ed address as of ``now`` (most recent last; the oldest beyond
    KNOWN_MAX dropped)."""
    known[address] = now
    known.move_to_end(address)
    if len(known) > KNOWN_MAX:
        known.popitem(last=False)


def _end_of(t: CtTuple, source: bool) -> End:
    """An end of a conntrack tuple in the exact form (address padded as in flow keys)."""
    addr = t.src if source else t.dst
    family = abi.AF_INET if len(addr) == 4 else abi.AF_INET6
    return (t.proto, family, addr.ljust(16, b"\0"), t.sport if source else t.dport)


def _replies_of(orig: CtTuple, answer: Answer) -> Replies | None:
    """The replies' ends when conntrack's reply tuple says ``orig`` was NAT'ed in one
    direction: DNAT (the replies come from another end than ``orig``'s destination, back
    to its source) or SNAT (from its destination, to another end than its source); else
    None.

    Both at once (masquerade after DNAT: NodePort with ``externalTrafficPolicy: Cluster``,
    hairpin, ``--masquerade-all``) is None, left unpaired: the backend's node, when it is
    another, reports the connection as translated source ↔ backend, the 5-tuple of the
    replies' half here, and the enricher's cross-node dedup keeps one of those two; a
    joined client → backend record would match neither, and the dedup could drop both.
    """
    if answer.reply is None or answer.orig != orig:
        return None  # no entry; or orig matched an entry's reply direction: not a client
    reply = answer.reply
    if reply.proto != orig.proto:
        return None
    dnat = (reply.src, reply.sport) != (orig.dst, orig.dport)
    snat = (reply.dst, reply.dport) != (orig.src, orig.sport)
    if dnat == snat:
        return None  # not NAT'ed; or both (above)
    return _end_of(reply, True), _end_of(reply, False)


def _add_nat_keys(
    wire: dict[str, Any], orig: CtTuple, replies: Replies, text: Callable[[bytes, int], str]
) -> None:
    """The optional raw keys of a joined or rewritten record: ``nat_dst``/``nat_dport``
    (the end the client sent to) after DNAT, ``nat_src``/``nat_sport`` (the end its
    source was translated to) after SNAT; in :class:`RawFlow`'s key order."""
    service, client = _end_of(orig, False), _end_of(orig, True)
    if replies[0] != service:
        wire["nat_dst"], wire["nat_dport"] = text(service[2], service[1]), service[3]
    if replies[1] != client:
        translated = replies[1]
        wire["nat_src"] = text(translated[2], translated[1])
        wire["nat_sport"] = translated[3]
