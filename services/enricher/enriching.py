"""Raw events in, enriched records out: the enricher's pure core (no I/O).

:class:`Enricher` holds the join state — a :class:`Resolver` (Kubernetes or local),
the socket table, the DNS name cache, and the nodes known to run collectors — and turns
raw flow and DNS wire dicts into DESIGN.md records grouped by output subject.

Per flow, in order:

1. check the raw record and canonicalise both addresses (cached);
2. resolve both addresses to identities; find the process behind each end from socket
   events, first on the reporting node, then on the endpoint's own node — so a
   cross-node connection gets both processes; a container id refines an endpoint to the
   exact pod and container (hostNetwork pods resolve to their node until then);
3. orient: ``source`` is the initiator when the raw record says so (SYN seen) or a
   socket event does (``connect`` on one end, ``accept`` on the other), else the
   collector's orientation with ``flow.direction = unknown``; swapping the ends swaps
   the forward and reverse counters;
4. cross-node dedup (see :func:`merge_owner`): of the reports of one connection by
   several nodes' collectors, keep exactly one, chosen by a rule every report agrees on
   without coordination;
5. DNS names: the destination's name as resolved by the source, and vice versa.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socket import AF_INET, inet_pton
from typing import Any

import orjson
from flowscope.core import codec, subjects
from flowscope.core.community_id import community_id_packed
from flowscope.core.errors import RecordError
from flowscope.core.records import (
    DIRECTIONS,
    END_REASONS,
    ICMP,
    ICMPV6,
    SOCKET_EVENTS,
    TCP,
    RawDns,
    tcp_flag_tags,
    transport_name,
)
from flowscope.enricher.identities import Identity, Resolver
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketOwner, SocketTable

try:  # the compiled core (flowcore.c), built by `pip install`; the Python path otherwise
    from flowscope.enricher import _flowcore
except ImportError:  # pragma: no cover - a build without a C compiler
    _flowcore = None  # type: ignore[assignment]
NATIVE_AVAILABLE = _flowcore is not None

ICMP_PROTOS = frozenset({ICMP, ICMPV6})  # ports carry ICMP type/code: reported as 0
MAX_ADDRESSES = 200_000  # canonical-address cache bound
MAX_CIDS = 65_536  # Community ID cache bound (5-tuples; ~12 MB when full)
FINAL_REASONS = frozenset({"idle_timeout", "end_of_flow_detected", "forced_end"})  # last report
LOOKUP_KINDS = ("pod", "service", "node", "host", "external", "unknown")

_FLAG_TAGS = [tcp_flag_tags(bits) for bits in range(256)]
_TRANSPORTS = {p: transport_name(p) for p in range(256)}
_FORWARD, _UNKNOWN = DIRECTIONS

# (key, type) of every RawFlow field, required first; checked per record on the hot path
# without building a RawFlow (``RawFlow.from_wire`` reflects on type hints per call).
_FLOW_REQUIRED = (
    ("observer", str), ("start_ns", int), ("end_ns", int), ("end_reason", str),
    ("proto", int), ("src", str), ("dst", str), ("sport", int), ("dport", int),
    ("bytes", int), ("packets", int), ("rbytes", int), ("rpackets", int),
)  # fmt: skip
_FLOW_OPTIONAL = (
    ("tcp_flags", int), ("initiator", bool), ("ifindex", int), ("nat_dst", str), ("nat_dport", int),
)  # fmt: skip
MAX_NODE_NAME = 253  # a raw record's observer: a node's name, a DNS subdomain
PID_MAX = 2**32 - 1  # process and thread ids are 32-bit in the kernel (and in bpf/)
MAX_NAT_IDENTITIES = 10_000  # backend identities with the dialled Service's name
_SOCKET_REQUIRED = (
    ("observer", str), ("time_ns", int), ("event", str), ("proto", int), ("src", str),
    ("sport", int), ("dst", str), ("dport", int), ("pid", int), ("tid", int), ("comm", str),
)  # fmt: skip
_SOCKET_OPTIONAL = (("cgroup_id", int), ("container_id", str), ("netns", int))
_DNS_REQUIRED = (
    ("observer", str), ("time_ns", int), ("id", int), ("qname", str), ("qtype", str),
    ("rcode", str), ("client", str), ("client_port", int), ("server", str), ("server_port", int),
)  # fmt: skip
_DNS_OPTIONAL = (("proto", int), ("latency_ns", int), ("answers", list))
_ANSWER_REQUIRED = (("name", str), ("type", str), ("ttl", int), ("data", str))
# Lengths of raw strings the join state keeps (docs/records.md): its bounds count entries,
# which bounds memory only if each entry's strings are bounded too. Each is the longest
# the collector writes; a longer string is a bad record.
MAX_COMM = 16  # the kernel's char[16] up to its NUL; an undecodable byte is one U+FFFD
MAX_CONTAINER_ID = 128  # the collector's are 64 hex digits (collector/containers.py)
# the DNS parser's longest name: 255 wire octets are at most 250 of a name's in 4 labels
# (63, 63, 63, 61), each octet written \DDD at worst, and 3 dots
MAX_DNS_NAME = 4 * 250 + 3
# qtype, rcode and an answer's type: the parser writes a mnemonic (10 characters at most:
# NSEC3PARAM), TYPE<n> or RCODE<n> (9: TYPE65535, RCODE4095); room for mnemonics to come
MAX_DNS_CODE = 16
# the parser's answers per message: one is 12 octets at least (root owner, type, class,
# TTL, length, a CNAME to the root) after the 12-octet header, in at most 65 535 octets
MAX_DNS_ANSWERS = (65_535 - 12) // 12
MAX_DNS_TTL = 2**31 - 1  # RFC 2181 §8: the parser writes a TTL with the top bit set as 0


def check_dns(record: Any, index: int) -> RawDns:
    """A checked raw DNS exchange (the fast equivalent of ``RawDns.from_wire``)."""
    check(record, "raw.dns", index, _DNS_REQUIRED, _DNS_OPTIONAL)
    check_observer(record["observer"], "raw.dns", index)
    if not (0 <= record["client_port"] <= 65535 and 0 <= record["server_port"] <= 65535
            and 0 <= record.get("proto", 17) <= 255):  # fmt: skip
        raise RecordError("raw.dns", index, "proto or port out of range")
    if not (0 <= record["id"] <= 65535 and record.get("latency_ns", 0) >= 0):
        raise RecordError("raw.dns", index, "id or latency_ns out of range")
    if len(record["qname"]) > MAX_DNS_NAME:
        raise RecordError("raw.dns", index, f"qname longer than {MAX_DNS_NAME} characters")
    if len(record["qtype"]) > MAX_DNS_CODE or len(record["rcode"]) > MAX_DNS_CODE:
        raise RecordError("raw.dns", index, f"qtype or rcode longer than {MAX_DNS_CODE} characters")
    answers = record.get("answers", [])
    check_answers(answers, index)
    return RawDns(
        record["observer"], record["time_ns"], record["id"], record["qname"], record["qtype"],
        record["rcode"], record["client"], record["client_port"], record["server"],
        record["server_port"], record.get("proto", 17), record.get("latency_ns", 0),
        [{k: a[k] for k in ("name", "type", "ttl", "data")} for a in answers],
    )  # fmt: skip


def check_answers(answers: list[Any], index: int) -> None:
    """A raw DNS exchange's answers: at most as many as the parser takes from one message
    (every answer is learned, a name cache entry each, and copied to the DNS record),
    each shaped and bounded as the parser writes it."""
    if len(answers) > MAX_DNS_ANSWERS:
        raise RecordError("raw.dns", index, f"more than {MAX_DNS_ANSWERS} answers")
    for answer in answers:
        check(answer, "dns.answer", index, _ANSWER_REQUIRED)
        if len(answer["name"]) > MAX_DNS_NAME or len(answer["data"]) > MAX_DNS_NAME:
            raise RecordError(
                "raw.dns", index, f"answer name or data longer than {MAX_DNS_NAME} characters"
            )
        if len(answer["type"]) > MAX_DNS_CODE:
            raise RecordError(
                "raw.dns", index, f"answer type longer than {MAX_DNS_CODE} characters"
            )
        if not 0 <= answer["ttl"] <= MAX_DNS_TTL:
            raise RecordError("raw.dns", index, f"answer ttl out of range (0 to {MAX_DNS_TTL})")


def check(
    record: Any,
    schema: str,
    index: int,
    required: tuple[tuple[str, type], ...],
    optional: tuple[tuple[str, type], ...] = (),
) -> dict[str, Any]:
    """Check a raw wire dict's keys and types; :class:`RecordError` names the first fault."""
    if type(record) is not dict:
        raise RecordError(schema, index, "expected an object")
    for key, kind in required:
        if type(record.get(key)) is not kind:
            problem = "missing" if key not in record else f"must be {kind.__name__}"
            raise RecordError(schema, index, f"{key} {problem}")
    for key, kind in optional:
        if key in record and type(record[key]) is not kind:
            raise RecordError(schema, index, f"{key} must be {kind.__name__}")
    return record


def check_observer(observer: str, schema: str, index: int) -> None:
    """A raw record's observer is a node's name, 1 to ``MAX_NODE_NAME`` characters:
    every node costs memory in Observers, the socket table's keys and each record."""
    if not 0 < len(observer) <= MAX_NODE_NAME:
        raise RecordError(
            schema, index, f"observer must be a node name (1 to {MAX_NODE_NAME} characters)"
        )


# A raw flow's fields, as _flow_fields returns them: observer, proto, src, dst, sport,
# dport, start_ns, end_ns, end_reason, bytes, packets, rbytes, rpackets, tcp_flags,
# initiator, nat_dst (None when absent); a tuple: one allocation, unpacked by the caller
_FlowFields = tuple[str, int, str, str, int, int, int, int, str, int, int, int, int, int, bool, Any]
_Owner = SocketOwner | None  # an end's process, when the socket events name it
_Dialled = tuple[str, int] | None  # (Service address, port) a DNAT'ed flow's client dialled


def _flow_fields(raw: Any, i: int) -> _FlowFields:
    """A raw flow's fields in ``_FlowFields``' order, checked (:func:`check`, fast): keys
    are read once and type-checked in one expression; only a record failing that goes
    through :func:`check` for a precise error. ``nat_dst`` (None when absent) is checked
    with ``nat_dport`` by ``Enricher._nat``."""
    try:
        observer: str = raw["observer"]
        proto: int = raw["proto"]
        src_text: str = raw["src"]
        dst_text: str = raw["dst"]
        sport: int = raw["sport"]
        dport: int = raw["dport"]
        start_ns, end_ns, reason = raw["start_ns"], raw["end_ns"], raw["end_reason"]
        fwd_b, fwd_p, rev_b, rev_p = raw["bytes"], raw["packets"], raw["rbytes"], raw["rpackets"]
        flags = raw.get("tcp_flags", 0)
        initiator = raw.get("initiator", False)
        nat_dst = raw.get("nat_dst")  # set on a DNAT'ed flow (see _nat_ends)
    except (KeyError, TypeError, AttributeError):
        check(raw, "raw.flow", i, _FLOW_REQUIRED, _FLOW_OPTIONAL)
        raise  # check always raises for such a record
    if not (
        type(observer) is str and type(proto) is int and type(src_text) is str
        and type(dst_text) is str and type(sport) is int and type(dport) is int
        and type(start_ns) is int and type(end_ns) is int and type(reason) is str
        and type(fwd_b) is int and type(fwd_p) is int and type(rev_b) is int
        and type(rev_p) is int and type(flags) is int and type(initiator) is bool
        and type(raw.get("ifindex", 0)) is int
    ):  # fmt: skip
        check(raw, "raw.flow", i, _FLOW_REQUIRED, _FLOW_OPTIONAL)
    # the values in one expression too (check_observer's rule inline: a call per record
    # saved); the checks in their order, for the first fault's error, only when it fails
    if not (
        0 < len(observer) <= MAX_NODE_NAME and reason in END_REASONS
        and 0 <= proto <= 255 and 0 <= sport <= 65535 and 0 <= dport <= 65535
        and 0 <= flags <= 255 and fwd_b >= 0 and fwd_p >= 0 and rev_b >= 0 and rev_p >= 0
        and 0 <= start_ns <= end_ns
    ):  # fmt: skip
        check_observer(observer, "raw.flow", i)
        if reason not in END_REASONS:
            raise RecordError("raw.flow", i, f"unknown end_reason {reason!r}")
        if not 0 <= start_ns <= end_ns:  # the compiled core hands such a record here
            raise RecordError("raw.flow", i, "start_ns negative or after end_ns")
        raise RecordError("raw.flow", i, "proto, port, flag or counter out of range")
    return (observer, proto, src_text, dst_text, sport, dport, start_ns, end_ns, reason,
            fwd_b, fwd_p, rev_b, rev_p, flags, initiator, nat_dst)  # fmt: skip


def merge_owner(src: tuple[str, int], dst: tuple[str, int], src_home: str, dst_home: str) -> str:
    """The node whose report of a connection is kept ('' when no end's home is known):
    direction-free.

    An end's home node sees every packet of it (a pod's on its veth, a node's on its
    own interfaces), so with one home known, or both ends at home on one node, that
    node's report is the one kept (a pod → outside connection also counted by the node
    it leaves through, an egress gateway). Two homes both see the connection, as the
    same 5-tuple, possibly oriented differently; ordering the two (address, port) ends
    makes the choice the same for both reports, so every replica, with no
    coordination, keeps one report and drops the other.
    """
    if not src_home:
        return dst_home
    if not dst_home or src_home == dst_home:
        return src_home
    return src_home if src <= dst else dst_home


@dataclass(slots=True)
class Tally:
    """What one batch did, in plain integers (folded into Prometheus per batch)."""

    records_in: int = 0
    records_out: int = 0
    dedup_dropped: int = 0
    lookups: dict[str, int] = field(default_factory=dict)
    process_hits: int = 0
    process_misses: int = 0
    dns_hits: int = 0
    dns_misses: int = 0

    def lookup(self, kind: str) -> None:
        self.lookups[kind] = self.lookups.get(kind, 0) + 1


class Output:
    """Enriched records grouped by subject — as wire dicts (``by_subject``) or as
    rendered NDJSON lines (``lines``) — the batch's tally, and its bad records.

    The compiled core's ``flow_body`` leaves its lines in ``rendered`` (a
    ``_flowcore.Lines``: one buffer, no object per line), which the publisher frames
    as they are; ``lines`` is made from it on first use. ``oversize``: the records the
    publisher dropped as too large for one NATS message (``Pipeline._messages``).
    """

    __slots__ = ("_lines", "bad", "by_subject", "oversize", "rendered", "tally")

    def __init__(
        self,
        by_subject: dict[str, list[dict[str, Any]]] | None = None,
        lines: dict[str, list[bytes]] | None = None,
        tally: Tally | None = None,
        bad: list[tuple[Any, RecordError]] | None = None,
    ) -> None:
        self.by_subject = {} if by_subject is None else by_subject
        self._lines = lines
        self.rendered: Any = None  # set by flow_body
        self.tally = Tally() if tally is None else tally
        self.bad = [] if bad is None else bad
        self.oversize = 0  # records too large for one message (set when published)

    @property
    def lines(self) -> dict[str, list[bytes]]:
        """Subject → NDJSON lines, in order (those of ``rendered`` when it is set)."""
        if self._lines is None:
            self._lines = {} if self.rendered is None else self.rendered.lines()
        return self._lines

    def __repr__(self) -> str:
        return (
            f"Output(by_subject={self.by_subject!r}, lines={self.lines!r}, "
            f"tally={self.tally!r}, bad={self.bad!r})"
        )


MINUTE_NS = 60 * 10**9
HISTORY = 1_500  # minutes of events kept per node (a day and some)
MAX_OBSERVERS = 10_000  # nodes kept (Kubernetes supports 5,000 a cluster): ≤ ~65 MB of minutes


class Observers:
    """Nodes known to run a collector, by the times of their raw events.

    A node counts as running a collector at time ``t`` when it has an event (a socket
    event's or DNS exchange's ``time_ns``, a flow's ``end_ns``) within ``ttl`` of ``t``
    — the time of the report being judged, not of its arrival: the state replayed at
    start (``state_lookback``) arrives at once, and a node whose collector stopped
    minutes before must not look live because its old events were just read again. An
    event time is the node's own clock (kept within seconds by NTP; ``ttl`` is minutes).

    ``seen`` keeps each node's newest event time (the compiled core's fast answer: an
    event within ``ttl``); ``minutes`` keeps which minutes (of event time) it had events
    in, so that a report older than ``ttl`` before the newest event — a backlog read
    after an outage or a restart, which has just seen the nodes' newest events — is
    judged by the events around its own time, and one event far ahead (a clock stepped)
    does not make a node's current reports look inactive. Only minutes wholly within
    ``ttl`` of the report count (the minutes shorten ``ttl`` by up to one, never
    lengthen it). Up to ``HISTORY`` minutes a node (a day: the raw stream's default
    retention), the oldest forgotten first, in an ascending array of 32-bit ints (4
    bytes a minute: 6 KB for a full day, where a set of ints took 170 KB). With no event
    of the node found within ``ttl`` of a report (a clock far off, a hostile time, a
    report older than what is kept) the node is not active, which keeps both reports of
    a connection: duplicated, never lost. Times are unix nanoseconds, held in
    ``[0, MAX_TIME_NS]``.

    Memory is bounded by forgetting, which only ever makes a node not active (both
    reports kept): :meth:`expire` forgets what no report of the last ``HISTORY`` minutes
    is judged by (a node gone from the cluster, minutes older than that), and at most
    ``max_nodes`` nodes are kept — observer names are a raw record's input — those with
    the oldest newest events forgotten first.
    """

    def __init__(
        self,
        ttl: float,
        clock: Callable[[], float] = time.time_ns,
        max_nodes: int = MAX_OBSERVERS,
    ) -> None:
        """``clock``: unix nanoseconds, for :meth:`saw` without an event time and for
        :meth:`expire`."""
        self.ttl_ns = math.ceil(ttl * 1e9)  # an int: a time's distance is compared exactly
        self._clock = clock
        self._max_nodes = max_nodes
        self.seen: dict[str, int] = {}  # node → its newest event time (unix ns)
        # node → minutes with events, ascending ('i': a minute of a time in
        # [0, MAX_TIME_NS] is below 2^28)
        self.minutes: dict[str, array[int]] = {}

    def saw(self, node: str, at: int | None = None) -> None:
        """An event of ``node`` at ``at`` (unix ns; the clock's now when None)."""
        at = event_time(int(self._clock()) if at is None else at)
        seen = self.seen.get(node)
        if seen is None or at > seen:
            self.seen[node] = at
        self.in_minute(node, at // MINUTE_NS)

    def in_minute(self, node: str, minute: int) -> None:
        """``node`` had an event in ``minute`` (of event time); ``node``'s newest event
        is in ``seen`` (set first, by every caller)."""
        minutes = self.minutes.get(node)
        if minutes is None:
            minutes = self.minutes[node] = array("i")
            if len(self.seen) > self._max_nodes:
                self._forget_oldest(node)
        if not minutes or minute > minutes[-1]:
            minutes.append(minute)  # the common case: a node's next minute
        else:
            i = bisect_left(minutes, minute)
            if minutes[i] == minute:
                return
            minutes.insert(i, minute)
        if len(minutes) > HISTORY:
            del minutes[0]

    def _forget_oldest(self, keep: str) -> None:
        """Forget the nodes with the oldest newest events down to ``max_nodes`` less a
        tenth (a flood of new names costs one partial sort per tenth, not a scan per
        name), never ``keep``: the node being added."""
        seen = self.seen
        count = len(seen) - self._max_nodes + self._max_nodes // 10
        oldest = heapq.nsmallest(count + 1, seen, key=seen.__getitem__)
        for node in [n for n in oldest if n != keep][:count]:
            del seen[node]
            self.minutes.pop(node, None)

    def expire(self, now: int | None = None) -> None:
        """Forget what no report of the last ``HISTORY`` minutes before ``now`` (unix
        ns; the clock's when None) is judged by: the nodes with no event within ``ttl``
        of that window (their reports' time has passed: a node gone for good, an
        autoscaled one), and the others' minutes before it. Such a report is judged as
        before; an older one finds the node not active (both reports kept).

        ``now`` is never later than the newest event seen: when every node's events are
        older than the clock's day (a stream read long after, data from another day),
        the nodes are judged against each other, not forgotten all at once every call
        and their connections' reports kept twice."""
        now = int(self._clock()) if now is None else now
        if self.seen:
            now = min(now, max(self.seen.values()))
        oldest = now - HISTORY * MINUTE_NS - self.ttl_ns  # no report's ttl reaches below
        first = oldest // MINUTE_NS + 1  # the first minute wholly after it (see active)
        seen, all_minutes = self.seen, self.minutes
        for node in [node for node, at in seen.items() if at <= oldest]:
            del seen[node]
            all_minutes.pop(node, None)
        for minutes in all_minutes.values():
            if minutes and minutes[0] < first:
                del minutes[: bisect_left(minutes, first)]

    def active(self, node: str, at: int) -> bool:
        """Whether ``node`` ran a collector at ``at`` (unix ns, the report's time): its
        newest event within ``ttl``, or a minute with events wholly within ``ttl`` (so
        never an event further away: short of a minute, both reports are kept)."""
        seen = self.seen.get(node)
        if seen is None:
            return False
        at = event_time(at)
        if abs(at - seen) < self.ttl_ns:
            return True
        minutes = self.minutes.get(node)
        if not minutes:
            return False
        i = bisect_left(minutes, (at - self.ttl_ns) // MINUTE_NS + 1)
        return i < len(minutes) and minutes[i] <= (at + self.ttl_ns) // MINUTE_NS - 1

    def __len__(self) -> int:
        return len(self.seen)


MAX_TIME_NS = 2**63 - 1  # event times beyond (or before 0) are held at the bound


def event_time(at: int) -> int:
    """An event time (unix ns) held in ``[0, MAX_TIME_NS]``: what the compiled core,
    which reads times as signed 64-bit, holds them to as well."""
    return 0 if at < 0 else MAX_TIME_NS if at > MAX_TIME_NS else at


class Enricher:
    """The join state and the two record transformations (flows, DNS)."""

    def __init__(
        self,
        resolver: Resolver,
        sockets: SocketTable,
        names: NameCache,
        observers: Observers,
        clock: Callable[[], float] = time.monotonic,
        cid_cache: int = MAX_CIDS,
        native: bool = True,
    ) -> None:
        """``cid_cache``: Community IDs remembered (oriented 5-tuples); 0 turns it off.
        ``native``: render flow lines with the compiled core when it is built
        (:attr:`native` says whether it is in use); its output is the Python path's,
        byte for byte."""
        self.resolver = resolver
        self.sockets = sockets
        self.names = names
        self.observers = observers
        self._clock = clock
        # raw address text → (canonical text, network.type, network-order bytes): the
        # bytes feed the Community ID, sparing its own per-address cache two probes
        self._addresses: dict[str, tuple[str, str, bytes]] = {}
        # Community ID per oriented 5-tuple of a flow still open: a pure function of the
        # tuple (SHA-1 + base64, ~1 µs), and an open flow is reported again every active
        # timeout; a flow's final report (idle, FIN/RST seen, collector stopping) drops it
        self._cids: dict[tuple[int, str, str, int, int], str] = {}
        self._max_cids = cid_cache
        # (backend identity, Service name) → the identity naming that Service (NAT'ed
        # flows); the first item guards against a re-used id() after the cache dropped it.
        self._nat_ids: dict[tuple[int, str], tuple[Identity, Identity]] = {}
        self.native = native and NATIVE_AVAILABLE

    # ------------------------------------------------------------ state

    def learn_sockets(self, records: Iterable[Any]) -> list[tuple[Any, RecordError]]:
        """Apply socket events; returns the bad ones."""
        bad = []
        for i, record in enumerate(records):
            try:
                event = self._socket(record, i)
            except RecordError as e:
                bad.append((record, e))
                continue
            self.observers.saw(event["observer"], event["time_ns"])
            self.sockets.learn(event)
        return bad

    def check_sockets(self, records: Iterable[Any]) -> list[tuple[Any, RecordError]]:
        """The bad socket events of a batch (without learning the good ones)."""
        bad = []
        for i, record in enumerate(records):
            try:
                self._socket(record, i)
            except RecordError as e:
                bad.append((record, e))
        return bad

    def _socket(self, record: Any, i: int) -> dict[str, Any]:
        """A checked socket event with canonical addresses."""
        event = check(record, "raw.socket", i, _SOCKET_REQUIRED, _SOCKET_OPTIONAL)
        check_observer(event["observer"], "raw.socket", i)
        if event["event"] not in SOCKET_EVENTS:
            raise RecordError("raw.socket", i, f"unknown event {event['event']!r}")
        if not (0 <= event["proto"] <= 255 and 0 <= event["sport"] <= 65535
                and 0 <= event["dport"] <= 65535):  # fmt: skip
            raise RecordError("raw.socket", i, "proto or port out of range")
        if not (0 <= event["pid"] <= PID_MAX and 0 <= event["tid"] <= PID_MAX):
            # the kernel's ids are 32-bit; a larger one would fail every flow it joins
            # when the record is rendered (orjson writes at most 64-bit integers)
            raise RecordError("raw.socket", i, "pid or tid out of range")
        if len(event["comm"]) > MAX_COMM:
            raise RecordError("raw.socket", i, f"comm longer than {MAX_COMM} characters")
        if len(event.get("container_id", "")) > MAX_CONTAINER_ID:
            raise RecordError(
                "raw.socket", i, f"container_id longer than {MAX_CONTAINER_ID} characters"
            )
        event["src"] = self._address(event["src"], "raw.socket", i, "src")[0]
        if event["dst"]:
            event["dst"] = self._address(event["dst"], "raw.socket", i, "dst")[0]
        return event

    def learn_dns(self, records: Iterable[Any], age: float = 0.0) -> list[tuple[Any, RecordError]]:
        """Remember the names clients resolved, received ``age`` seconds ago
        (:meth:`NameCache.learn`); returns the bad records."""
        bad = []
        for i, record in enumerate(records):
            try:
                dns = check_dns(record, i)
                client = self._address(dns.client, "raw.dns", i, "client")[0]
            except RecordError as e:
                bad.append((record, e))
                continue
            self.observers.saw(dns.observer, dns.time_ns)
            answers = self._address_answers(dns.answers)
            if answers:
                # a dual-stack pod may ask over IPv4 and connect over IPv6: learned for both
                others = self.resolver.other_addresses(client)
                self.names.learn(client, dns.qname, answers, others, age)
        return bad

    def _address_answers(self, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A/AAAA answers with canonical addresses (flows carry canonical text), and the
        CNAME answers that put them on the question's chain (NameCache.learn); answers
        whose data is not an address are left out."""
        out = []
        for answer in answers:
            if answer["type"] == "CNAME":
                out.append(answer)
                continue
            if answer["type"] not in ("A", "AAAA"):
                continue
            try:
                canonical = self._address(answer["data"], "raw.dns", 0, "answer")[0]
            except RecordError:
                continue
            out.append({**answer, "data": canonical})
        return out

    # ------------------------------------------------------------ flows

    def flows(self, records: Iterable[Any]) -> Output:
        """Enrich a batch of raw flow dicts into wire dicts (``by_subject``); bad records
        are returned, not raised."""
        out = Output()
        self._flows(records, render_wire, out.by_subject, out)
        return out

    def flow_lines(self, records: Iterable[Any]) -> Output:
        """Like :meth:`flows`, but each record rendered straight to its NDJSON line
        (``lines``): byte for byte ``orjson.dumps(wire) + b"\\n"`` of the same record,
        at a fraction of the cost (the pipeline's path). The compiled core reads an
        iterator of records whole before the first one is enriched (the pipeline passes
        a list), so an iterator that fails part-way leaves the join state untouched."""
        out = Output()
        self._flows(records, render_line, out.lines, out)
        return out

    def flow_batch(self, headers: Mapping[str, str] | None, body: bytes) -> Output:
        """:meth:`flow_lines` of one raw flow message as it arrives, decoded as
        :func:`codec.decode` decodes it (its :class:`CodecError` when the message is not
        a batch of records). The compiled core reads the body itself when its framing
        holds: a line written the way the collector writes it goes straight into the
        core's record, with no dict built (flowcore.c, ``flow_body``); the output and
        the join state are :meth:`flow_lines`'s on the decoded records."""
        if self.native and (lines := codec.framed(codec.RAW_FLOW, headers, body)) is not None:
            out = Output()
            if self._flows((), render_line, {}, out, (body, lines)):
                return out
        return self.flow_lines(codec.decode(codec.RAW_FLOW, headers, body))

    def _flows(
        self,
        records: Iterable[Any],
        render: Render,
        by_subject: dict[str, list[Any]],
        out: Output,
        body: tuple[bytes, int] | None = None,
    ) -> bool:
        """Enrich ``records`` (or, natively, an NDJSON body of so many lines, -1: any)
        into ``out``; False when the compiled core found the body has another number of
        lines or one that is not a JSON object (then nothing was done)."""
        tally = out.tally
        lookups = tally.lookups = dict.fromkeys(LOOKUP_KINDS, 0)
        now = self._clock()
        ready = self.resolver.ready
        if self.native and render is render_line:
            # The same loop in C: the common record's lookups, Community ID and line;
            # any other record (bad, NAT'ed, an address not seen yet, …) goes through
            # _flow, in order, so the output is _enrich_flows's.
            if body is None:
                _flowcore.flow_lines(self, records, now, out)
            elif not _flowcore.flow_body(self, *body, now, out):
                return False
        else:
            self._enrich_flows(records, now, render, by_subject, out)
        if not ready:  # nothing is known to be external before the first full sync
            lookups["unknown"] += lookups["external"]
            lookups["external"] = 0
        tally.process_misses = 2 * (tally.records_in - len(out.bad)) - tally.process_hits
        return True

    def _enrich_flows(
        self,
        records: Iterable[Any],
        now: float,
        render: Render,
        by_subject: dict[str, list[Any]],
        out: Output,
    ) -> None:
        """The Python path of :meth:`_flows`: each record through :meth:`_flow`, in order,
        into ``by_subject``, its bad records and its tally."""
        tally = out.tally
        flow = self._flow
        for i, record in enumerate(records):
            tally.records_in += 1
            try:
                enriched = flow(record, i, now, tally, render)
            except RecordError as e:
                out.bad.append((record, e))
                continue
            if enriched is None:
                tally.dedup_dropped += 1
                continue
            subject, wire = enriched
            bucket = by_subject.get(subject)
            if bucket is None:
                by_subject[subject] = [wire]
            else:
                bucket.append(wire)
            tally.records_out += 1

    def _flow(
        self, raw: Any, i: int, now: float, tally: Tally, render: Render
    ) -> tuple[str, Any] | None:
        """One raw flow → (subject, rendered record), or None when it is a dropped duplicate.

        The hot path, in steps that hand their values on as locals and tuples (no object
        per record); a call costs about as much as a lookup here, so the short parts
        (orienting, dedup, rendering) stay inline.
        """
        (observer, proto, src_text, dst_text, sport, dport, start_ns, end_ns, reason, fwd_b,
         fwd_p, rev_b, rev_p, flags, initiator, nat_dst) = _flow_fields(raw, i)  # fmt: skip
        src, dst, network, src_packed, dst_packed = self._flow_addresses(src_text, dst_text, i)
        # (Service address, port) the client dialled, and the backend's address
        nat = None if nat_dst is None else self._nat(raw, i)
        at = self._saw_report(observer, end_ns)
        src_id, dst_id, src_proc, dst_proc, nat, backend = self._join_ends(
            observer, proto, src, sport, dst, dport, nat, tally
        )
        direction = _FORWARD
        if initiator or _initiated(src_proc, dst_proc):
            pass
        elif _initiated(dst_proc, src_proc):
            src, dst, sport, dport = dst, src, dport, sport
            src_packed, dst_packed = dst_packed, src_packed
            src_id, dst_id, src_proc, dst_proc = dst_id, src_id, dst_proc, src_proc
            fwd_b, fwd_p, rev_b, rev_p = rev_b, rev_p, fwd_b, fwd_p
        else:
            direction = _UNKNOWN
        src_home, dst_home = src_id.home, dst_id.home
        if (src_home or dst_home) and self._duplicate(
            observer, at, (src, sport), (dst, dport), src_home, dst_home
        ):
            return None
        src_id, dst_id, src_name, dst_name = self._domains(
            nat, now, src, dst, src_id, dst_id, backend, tally
        )
        cid = self._community_id(proto, src, dst, sport, dport, src_packed, dst_packed, reason)
        ported = proto not in ICMP_PROTOS
        record = render(
            cid, start_ns, end_ns, reason, direction, network, proto, sport if ported else 0,
            dport if ported else 0, fwd_b, fwd_p, rev_b, rev_p, observer, flags, src_id, dst_id,
            src_proc, dst_proc, dst_name, src_name,
        )  # fmt: skip
        return f"{subjects.FLOWS}.{src_id.token}.{dst_id.token}", record

    def _flow_addresses(
        self, src_text: str, dst_text: str, i: int
    ) -> tuple[str, str, str, bytes, bytes]:
        """(source, destination, network.type, source bytes, destination bytes) of a raw
        flow's two addresses (:meth:`_address`); RecordError when they are of two families."""
        addresses = self._addresses
        src_found = addresses.get(src_text) or self._address(src_text, "raw.flow", i, "src")
        dst_found = addresses.get(dst_text) or self._address(dst_text, "raw.flow", i, "dst")
        src, network, src_packed = src_found
        dst, dst_network, dst_packed = dst_found
        if dst_network != network:
            raise RecordError("raw.flow", i, "src and dst are of different address families")
        return src, dst, network, src_packed, dst_packed

    def _saw_report(self, observer: str, end_ns: int) -> int:
        """The observer's event at the report's end time, as :meth:`Observers.saw` takes
        it (inline: no call when it falls in the node's newest minute); returns that time
        (:func:`event_time`), at which the report is judged."""
        at = end_ns if 0 <= end_ns <= MAX_TIME_NS else event_time(end_ns)
        observers = self.observers
        seen = observers.seen
        if at > seen.get(observer, -1):
            seen[observer] = at
        minutes = observers.minutes.get(observer)
        if not minutes or minutes[-1] != at // MINUTE_NS:  # else its newest minute
            observers.in_minute(observer, at // MINUTE_NS)
        return at

    def _join_ends(
        self, observer: str, proto: int, src: str, sport: int, dst: str, dport: int,
        nat: _Dialled, tally: Tally,
    ) -> tuple[Identity, Identity, _Owner, _Owner, _Dialled, str]:  # fmt: skip
        """(source identity, destination identity, source process, destination process,
        ``nat``, the backend's address) of a flow's ends as reported: each end resolved,
        its process found on the reporting node, else on the end's own node (else,
        DNAT'ed, by the Service the client dialled), and its identity refined by that
        process's container (:meth:`_refine`). ``nat`` is also found here when the
        backend's node reports the connection (:meth:`_dialled_ends`)."""
        resolve = self.resolver.resolve
        lookups = tally.lookups
        src_id = resolve(src)
        dst_id = resolve(dst)
        lookups[src_id.kind] += 1  # "external" becomes "unknown" per batch when not ready
        lookups[dst_id.kind] += 1
        find = self.sockets.find
        src_proc = find(observer, proto, src, sport, dst, dport)
        if src_proc is None and src_id.home and src_id.home != observer:
            src_proc = find(src_id.home, proto, src, sport, dst, dport)
        if src_proc is None and nat is not None:  # the client's socket names the Service
            src_proc = self._nat_client(nat, observer, src_id, proto, src, sport)
        dst_proc = find(observer, proto, dst, dport, src, sport)
        if dst_proc is None and dst_id.home and dst_id.home != observer:
            dst_proc = find(dst_id.home, proto, dst, dport, src, sport)
        backend = dst
        if nat is None and (src_proc is None or dst_proc is None) and self.sockets.dialling:
            # the backend's node reports a connection the client's node DNAT'ed
            nat, src_proc, dst_proc, backend = self._dialled_ends(
                observer, proto, src, sport, dst, dport, src_id, dst_id, src_proc, dst_proc
            )
        if src_proc is not None:
            tally.process_hits += 1
            src_id = self._refine(src_id, src_proc)
        if dst_proc is not None:
            tally.process_hits += 1
            dst_id = self._refine(dst_id, dst_proc)
        return src_id, dst_id, src_proc, dst_proc, nat, backend

    def _dialled_ends(
        self, observer: str, proto: int, src: str, sport: int, dst: str, dport: int,
        src_id: Identity, dst_id: Identity, src_proc: _Owner, dst_proc: _Owner,
    ) -> tuple[_Dialled, _Owner, _Owner, str]:  # fmt: skip
        """((Service address, port) or None, source process, destination process, the
        backend's address) of a flow not known to be DNAT'ed with an end's process not
        found: the backend's node reports a connection the client's node DNAT'ed when
        one end's socket dialled a Service (:meth:`_via`)."""
        if src_proc is None and (
            via := self._via(observer, src_id, dst_id, proto, src, sport, dst)
        ):
            nat, src_proc = via
            return nat, src_proc, dst_proc, dst
        if dst_proc is None and (
            via := self._via(observer, dst_id, src_id, proto, dst, dport, src)
        ):
            nat, dst_proc = via
            return nat, src_proc, dst_proc, src
        return None, src_proc, dst_proc, dst

    def _domains(
        self, nat: _Dialled, now: float, src: str, dst: str, src_id: Identity,
        dst_id: Identity, backend: str, tally: Tally,
    ) -> tuple[Identity, Identity, str | None, str | None]:  # fmt: skip
        """(source identity, destination identity, source domain, destination domain):
        each end's name as the other end resolved it (a DNAT'ed flow's: :meth:`_nat_ends`);
        a destination domain found is a DNS hit."""
        lookup = self.names.lookup
        if nat is None:
            dst_name = lookup(src, dst, now)
            src_name = lookup(dst, src, now)
        else:
            src_id, dst_id, src_name, dst_name = self._nat_ends(
                nat[0], now, src, dst, src_id, dst_id, dst == backend
            )
        if dst_name is not None:
            tally.dns_hits += 1
        else:
            tally.dns_misses += 1
        return src_id, dst_id, src_name, dst_name

    def _community_id(
        self, proto: int, src: str, dst: str, sport: int, dport: int, src_packed: bytes,
        dst_packed: bytes, reason: str,
    ) -> str:  # fmt: skip
        """The flow's Community ID, remembered per oriented 5-tuple while the flow is open
        (``_cids``) and forgotten with its final report."""
        cids = self._cids
        cid = cids.get(key := (proto, src, dst, sport, dport))
        if cid is None:
            cid = community_id_packed(proto, src_packed, dst_packed, sport, dport)
            if reason not in FINAL_REASONS and self._max_cids:
                if len(cids) >= self._max_cids:
                    cids.clear()
                cids[key] = cid
        elif reason in FINAL_REASONS:
            del cids[key]  # the connection is over: this was its last report
        return cid

    def _duplicate(
        self, observer: str, at: int, src: tuple[str, int], dst: tuple[str, int],
        src_home: str, dst_home: str,
    ) -> bool:  # fmt: skip
        """Whether this report is another node's copy of one its :func:`merge_owner`
        reports: only while every known home runs a collector at the report's time
        (:class:`Observers`), so a report is never dropped for a node that sends none."""
        if merge_owner(src, dst, src_home, dst_home) == observer:
            return False
        active = self.observers.active
        return (not src_home or active(src_home, at)) and (
            not dst_home or dst_home == src_home or active(dst_home, at)
        )

    # ------------------------------------------------------------ DNAT'ed flows

    def _nat(self, raw: dict[str, Any], i: int) -> tuple[str, int]:
        """(canonical pre-NAT address, port) of a DNAT'ed raw flow (RecordError if bad)."""
        text, port = raw["nat_dst"], raw.get("nat_dport")
        if type(text) is not str or type(port) is not int or not 0 <= port <= 65535:
            raise RecordError("raw.flow", i, "nat_dst must be str and nat_dport a port")
        return self._address(text, "raw.flow", i, "nat_dst")[0], port

    def _nat_client(
        self, nat: tuple[str, int], observer: str, ident: Identity, proto: int, client: str,
        cport: int,
    ) -> SocketOwner | None:  # fmt: skip
        """The client's socket of a DNAT'ed flow: it is connected to the Service address."""
        service, port = nat
        found = self.sockets.find(observer, proto, client, cport, service, port)
        if found is None and ident.home and ident.home != observer:
            found = self.sockets.find(ident.home, proto, client, cport, service, port)
        return found

    def _via(
        self, observer: str, ident: Identity, peer_id: Identity, proto: int, addr: str,
        port: int, peer: str,
    ) -> tuple[tuple[str, int], SocketOwner] | None:  # fmt: skip
        """((Service address, port), the client's owner) when the socket at (addr, port)
        dialled a Service address, not ``peer``, on its own node — another than the
        reporting one and the peer's: the backend's node reports, after the DNAT on the
        client's node, the connection the client's socket opened to the Service (the
        report of the client's node, which carries ``nat_dst``, is the duplicate the
        merge rule may drop)."""
        home = ident.home
        if not home or not peer_id.home or home == observer or home == peer_id.home:
            return None
        found = self.sockets.dialled(home, proto, addr, port)
        if found is None:
            return None
        service, service_port, owner = found
        if service == peer or self.resolver.resolve(service).kind != "service":
            return None
        return (service, service_port), owner

    def _nat_ends(
        self, service: str, now: float, src: str, dst: str, src_id: Identity,
        dst_id: Identity, backend_is_dst: bool,
    ) -> tuple[Identity, Identity, str | None, str | None]:  # fmt: skip
        """(source identity, destination identity, source domain, destination domain) of a
        DNAT'ed flow: the backend end names the Service whose address the client dialled,
        and its domain is what the client resolved to that address (it asked for the
        Service's name, not the pod's), else to the backend's own address."""
        client, backend = (src, dst) if backend_is_dst else (dst, src)
        lookup = self.names.lookup
        backend_name = lookup(client, service, now) or lookup(client, backend, now)
        client_name = lookup(backend, client, now)
        found = self.resolver.resolve(service)
        if found.kind == "service":
            name = found.meta["k8s.service.name"]
            if backend_is_dst:
                dst_id = self._named_service(dst_id, name)
            else:
                src_id = self._named_service(src_id, name)
        if backend_is_dst:
            return src_id, dst_id, client_name, backend_name
        return src_id, dst_id, backend_name, client_name

    def _named_service(self, ident: Identity, service: str) -> Identity:
        """``ident`` with ``k8s.service.name`` = ``service`` on both sides (cached)."""
        found = self._nat_ids.get((id(ident), service))
        if found is not None and found[0] is ident:
            return found[1]
        named = Identity(
            ident.kind, ident.token, ident.home, ident.address,
            {**ident.meta, "k8s.service.name": service}, ident.pod_uid,
        )  # fmt: skip
        if len(self._nat_ids) >= MAX_NAT_IDENTITIES:
            self._nat_ids.clear()
        self._nat_ids[(id(ident), service)] = (ident, named)
        return named

    # ------------------------------------------------------------ DNS records

    def dns(self, records: Iterable[Any]) -> Output:
        """Enrich a batch of raw DNS exchanges into DNS records (client = source)."""
        out = Output()
        for i, record in enumerate(records):
            out.tally.records_in += 1
            try:
                enriched = self._dns(check_dns(record, i), i, out.tally)
            except RecordError as e:
                out.bad.append((record, e))
                continue
            if enriched is None:
                out.tally.dedup_dropped += 1
                continue
            subject, wire = enriched
            out.by_subject.setdefault(subject, []).append(wire)
            out.tally.records_out += 1
        return out

    def _dns(self, dns: RawDns, i: int, tally: Tally) -> tuple[str, dict[str, Any]] | None:
        """One raw exchange → (subject, DNS record), or None when it is a dropped duplicate.

        Cross-node dedup: a client and its DNS server on two nodes are both seen, by both
        collectors. The client's own node always sees the whole exchange (the query
        leaves the client there, the answer comes back there), so while that node runs a
        collector (at the exchange's time, see :class:`Observers`), the other node's
        report is dropped — without coordination, like
        flows. Only the client's node names the server the client asked (a Service
        address, not the DNS pod behind its DNAT).
        """
        client = self._address(dns.client, "raw.dns", i, "client")[0]
        server = self._address(dns.server, "raw.dns", i, "server")[0]
        client_id = self._resolve(client, tally)
        home = client_id.home
        if home and home != dns.observer and self.observers.active(home, dns.time_ns):
            return None
        server_id = self._resolve(server, tally)
        proc = self._process(
            dns.observer, client_id, dns.proto, client, dns.client_port, server,
            dns.server_port, tally,
        )  # fmt: skip
        client_id = self._refine(client_id, proc)
        wire = _dns_wire(dns, client_id, server_id, proc)
        return subjects.dns(client_id.token), wire

    # ------------------------------------------------------------ joins

    def _address(self, text: str, schema: str, i: int, key: str) -> tuple[str, str, bytes]:
        """(canonical text, network.type, network-order bytes) of an address; RecordError
        when not one."""
        found = self._addresses.get(text)
        if found is None:
            try:
                found = address_parts(text)
            except ValueError:
                raise RecordError(schema, i, f"{key} is not an IP address: {text[:64]!r}") from None
            if len(self._addresses) >= MAX_ADDRESSES:
                self._addresses.clear()
            self._addresses[text] = found
        return found

    def learn_addresses(self, addresses: list[str]) -> None:
        """Addresses whose identities the resolver has just built ahead of the flows
        (``Inventory.warm``), taken in as a flow's first record naming them would: their
        canonical forms and, natively, the compiled core's address table with the
        identities. Nothing is counted; a text that is not an address is skipped."""
        if self.native:
            _flowcore.learn_addresses(self, addresses, Output())
            return
        for text in addresses:
            self._known_address(text)

    def _known_address(self, text: str) -> tuple[str, str, bytes] | None:
        """:meth:`_address` for the compiled core, which reads a raw line itself: None
        when ``text`` is not an address (the record then goes through :meth:`_flow`,
        which reports it)."""
        try:
            return self._address(text, "", 0, "")
        except RecordError:
            return None

    def _resolve(self, address: str, tally: Tally) -> Identity:
        found = self.resolver.resolve(address)
        kind = found.kind
        if kind == "external" and not self.resolver.ready:
            kind = "unknown"
        tally.lookup(kind)
        return found

    def _process(
        self,
        observer: str,
        ident: Identity,
        proto: int,
        laddr: str,
        lport: int,
        raddr: str,
        rport: int,
        tally: Tally,
    ) -> SocketOwner | None:
        """The process owning this end: on the reporting node, else on the end's node."""
        found = self.sockets.find(observer, proto, laddr, lport, raddr, rport)
        if found is None and ident.home and ident.home != observer:
            found = self.sockets.find(ident.home, proto, laddr, lport, raddr, rport)
        if found is None:
            tally.process_misses += 1
        else:
            tally.process_hits += 1
        return found

    def _refine(self, ident: Identity, proc: SocketOwner | None) -> Identity:
        """The exact pod and container when the socket's container id names one.

        A hostNetwork pod shares its node's address, so only the process tells them
        apart; for ordinary pods this picks the container that owns the socket.
        """
        if proc is None or not proc.container_id or ident.kind not in ("pod", "node"):
            return ident
        found = self.resolver.by_container(proc.container_id)
        if found is None:
            return ident
        if ident.kind == "pod" and found.pod_uid != ident.pod_uid:
            return ident
        if ident.kind == "node" and found.home != ident.home:
            return ident
        if found.address != ident.address:
            at = found.elsewhere.get(ident.address) if found.elsewhere else None
            found = at or _readdressed(found, ident.address)
        return found


def _dns_wire(
    dns: RawDns, client_id: Identity, server_id: Identity, proc: SocketOwner | None
) -> dict[str, Any]:
    """A DNS record as a wire dict: the exchange, the client as the source (with its
    process, when known) and the server as the destination."""
    wire: dict[str, Any] = {
        "time_ns": dns.time_ns,
        "dns.id": dns.id,
        "dns.question.name": dns.qname,
        "dns.question.type": dns.qtype,
        "dns.response_code": dns.rcode,
        "dns.answers": dns.answers,
        "dns.latency_ns": dns.latency_ns,
        "observer.node.name": dns.observer,
        "source.port": dns.client_port,
        "destination.port": dns.server_port,
    }
    wire.update(client_id.source)
    wire.update(server_id.destination)
    if proc is not None:
        _put_process(wire, "source.", proc)
    return wire


def _initiated(this: SocketOwner | None, other: SocketOwner | None) -> bool:
    """Whether the socket events say ``this`` end opened the connection."""
    return (this is not None and this.event == "connect") or (
        other is not None and other.event == "accept"
    )


def _put_process(wire: dict[str, Any], prefix: str, proc: SocketOwner) -> None:
    """The process keys of one end. pid 0 means the collector saw the socket but not
    its owner (a listener older than the collector): the event still orients the flow."""
    if proc.pid > 0:
        wire[prefix + "process.pid"] = proc.pid
        wire[prefix + "process.executable.name"] = proc.comm
    if proc.container_id:
        wire[prefix + "container.id"] = proc.container_id


# ---------------------------------------------------------------- rendering a flow record

Render = Callable[..., Any]  # the arguments of render_wire → one record


def render_wire(
    cid: str, start_ns: int, end_ns: int, reason: str, direction: str, network: str,
    proto: int, sport: int, dport: int, fwd_b: int, fwd_p: int, rev_b: int, rev_p: int,
    observer: str, flags: int, src_id: Identity, dst_id: Identity,
    src_proc: SocketOwner | None, dst_proc: SocketOwner | None,
    dst_name: str | None, src_name: str | None,
) -> dict[str, Any]:  # fmt: skip
    """A flow record as a wire dict: the definition of the record's keys and their order."""
    wire: dict[str, Any] = {
        "flow.community_id": cid,
        "flow.start_ns": start_ns,
        "flow.end_ns": end_ns,
        "flow.end_reason": reason,
        "flow.direction": direction,
        "network.type": network,
        "network.transport": _TRANSPORTS.get(proto) or transport_name(proto),
        "source.port": sport,
        "destination.port": dport,
        "flow.bytes.delta": fwd_b,
        "flow.packets.delta": fwd_p,
        "flow.reverse.bytes.delta": rev_b,
        "flow.reverse.packets.delta": rev_p,
        "observer.node.name": observer,
    }
    if proto == TCP:
        wire["flow.tcp.flags.tags"] = _FLAG_TAGS[flags & 0xFF]
    wire.update(src_id.source)
    wire.update(dst_id.destination)
    if src_proc is not None:
        _put_process(wire, "source.", src_proc)
    if dst_proc is not None:
        _put_process(wire, "destination.", dst_proc)
    if dst_name is not None:
        wire["destination.domain"] = dst_name
    if src_name is not None:
        wire["source.domain"] = src_name
    return wire


# The record's members, in render_wire's order, up to the identities; %b are JSON
# pieces (strings already quoted, or whole members), %d integers (orjson writes integers
# exactly as %d does); the last %b is what follows the identities, closing brace included.
_LINE = (
    b'{"flow.community_id":"%b","flow.start_ns":%d,"flow.end_ns":%d,"flow.end_reason":%b,'
    b'"flow.direction":%b,"network.type":%b,"network.transport":%b,"source.port":%d,'
    b'"destination.port":%d,"flow.bytes.delta":%d,"flow.packets.delta":%d,'
    b'"flow.reverse.bytes.delta":%d,"flow.reverse.packets.delta":%d,"observer.node.name":%b'
    b"%b,%b,%b%b"
)
_END = b"}\n"
_FLAGS_JSON = [b',"flow.tcp.flags.tags":' + orjson.dumps(tags) for tags in _FLAG_TAGS]
_TRANSPORTS_JSON = [codec.kept_json(_TRANSPORTS[p]) for p in range(256)]


def address_parts(text: str) -> tuple[str, str, bytes]:
    """(canonical text, network.type, network-order bytes) of an IP address's text, as
    ``ipaddress.ip_address`` reads it; ValueError when it is not one.

    A dotted quad ``inet_pton`` takes (four decimal numbers ≤ 255 without leading zeros,
    nothing around them) is its own canonical text: it is read there, ~10x faster than
    by ``ipaddress``, which reads everything else (IPv6, and the texts it rejects)."""
    try:
        return (text, "ipv4", inet_pton(AF_INET, text))
    except (OSError, ValueError):  # ValueError: an embedded NUL, or not encodable
        ip = ipaddress.ip_address(text)
        return (str(ip), "ipv6" if ip.version == 6 else "ipv4", ip.packed)


_STRINGS: dict[str, bytes] = {}  # str → its JSON form: node names, reasons, domains recur
MAX_STRINGS = 100_000


def json_str(text: str) -> bytes:
    """``orjson.dumps(text)``, cached (bounded)."""
    found = _STRINGS.get(text)
    if found is None:
        if len(_STRINGS) >= MAX_STRINGS:
            _STRINGS.clear()
        found = _STRINGS[text] = codec.kept_json(text)
    return found


def process_json(proc: SocketOwner) -> tuple[bytes, bytes]:
    """A socket owner's process keys as JSON members (each led by a comma, or empty)
    for the source and the destination side; rendered once per owner."""
    found = proc.json
    if found is None:
        sides = []
        for prefix in ("source.", "destination."):
            keys: dict[str, Any] = {}
            _put_process(keys, prefix, proc)
            sides.append(b"," + orjson.dumps(keys)[1:-1] if keys else b"")
        found = proc.json = (sides[0], sides[1])
    return found


def render_line(
    cid: str, start_ns: int, end_ns: int, reason: str, direction: str, network: str,
    proto: int, sport: int, dport: int, fwd_b: int, fwd_p: int, rev_b: int, rev_p: int,
    observer: str, flags: int, src_id: Identity, dst_id: Identity,
    src_proc: SocketOwner | None, dst_proc: SocketOwner | None,
    dst_name: str | None, src_name: str | None,
) -> bytes:  # fmt: skip
    """The same record as :func:`render_wire`, rendered straight to its NDJSON line
    (``orjson.dumps(render_wire(...)) + b"\\n"``, byte for byte — property-tested),
    joined from pre-rendered pieces: identities and processes carry theirs. ``cid`` is
    a Community ID ("1:" + base64), which JSON needs no escapes for.

    One ``bytes %`` builds the line (a list and a join only when a process or a name
    follows the identities); the strings' JSON forms are looked up inline, not through
    :func:`json_str`, which only renders the ones not seen yet.
    """
    strings = _STRINGS
    end = _END
    if (
        src_proc is not None or dst_proc is not None or dst_name is not None
        or src_name is not None
    ):  # fmt: skip
        parts = []
        if src_proc is not None:
            parts.append(process_json(src_proc)[0])
        if dst_proc is not None:
            parts.append(process_json(dst_proc)[1])
        if dst_name is not None:
            parts.append(b',"destination.domain":' + json_str(dst_name))
        if src_name is not None:
            parts.append(b',"source.domain":' + json_str(src_name))
        parts.append(end)
        end = b"".join(parts)
    return _LINE % (
        cid.encode(), start_ns, end_ns, strings.get(reason) or json_str(reason),
        strings.get(direction) or json_str(direction),
        strings.get(network) or json_str(network),
        _TRANSPORTS_JSON[proto] if 0 <= proto <= 255 else json_str(transport_name(proto)),
        sport, dport, fwd_b, fwd_p, rev_b, rev_p, strings.get(observer) or json_str(observer),
        _FLAGS_JSON[flags & 0xFF] if proto == TCP else b"", src_id.source_json,
        dst_id.destination_json, end,
    )  # fmt: skip


if _flowcore is not None:
    _flowcore.configure(
        render_line=render_line, record_error=RecordError, strings=_STRINGS, json_str=json_str,
        process_json=process_json, transports=_TRANSPORTS_JSON, flags=_FLAGS_JSON,
        end_reasons=END_REASONS, flows_prefix=subjects.FLOWS, directions=DIRECTIONS,
        kinds=LOOKUP_KINDS, loads=orjson.loads,
    )  # fmt: skip


def _readdressed(ident: Identity, address: str) -> Identity:
    """The same identity at another address (a hostNetwork pod's node address that is not
    among its podIPs), without the Services of its own address: none lists this one."""
    meta = {k: v for k, v in ident.meta.items() if k != "k8s.service.name"}
    return Identity(ident.kind, ident.token, ident.home, address, meta, ident.pod_uid)
