"""Which process owns a socket: the table socket events build and flows join against.

A socket event says "on node N, process P owns the socket local=(addr, port) ↔
remote=(addr, port)". Entries are keyed by (observer, proto, local addr, local port,
remote addr, remote port); a second index by the local end only answers for unconnected
UDP sockets and listeners (an event with an empty remote). A third names, per local end,
the remote a connected socket dialled (:meth:`SocketTable.dialled`): a client's socket
connected to a Service address, whose connection a node without the client's DNAT
reports to the backend pod instead. Memory is bounded: the
table is an LRU (a flow hit refreshes an entry, so long-lived connections keep their
process), and a closed socket is forgotten ``grace`` seconds after its close event. The
closes awaiting their grace stay within twice the bound however many sockets close in
one grace: an evicted or replaced entry's pending close is dropped with it (lazily).

A UDP socket's close names its local end only (remote unspecified: the kernel sends one
per socket, not per peer), so it expires the UDP entries of that local end: the exact
ones its ``udp`` events made, found through a fourth index (local end → those keys, which
follows the table: an entry leaving the table leaves the index), and the local-end one.
Several sockets may share a local end (``SO_REUSEPORT``: a server's workers), and each
reports its own peers once: so of the exact entries, a close expires those whose owner
is the close's (its pid) or unknown (pid 0: a peer reported before the socket's owner
was), leaving a live worker's entries alone — the others only when none is (the owner
recorded at the close may not be the one its events named: then the socket cannot be
told from the others, and all go as its own would).

Events can arrive out of order: a start-up snapshot's connect may be published after the
live close of the same socket. A close with no entry is remembered for ``grace`` seconds
(at most ``max_entries`` of them, oldest dropped first), and the connect or accept it
names, arriving within that time, starts out closed: its grace runs from the close, so
it is forgotten on the close's schedule instead of living on until the LRU drops it. For
a UDP close that is the local-end entry only: an exact entry learned after it may be a
new socket on the reused port (the kernel reports each peer of a socket once, so one
closed wrongly would stay unnamed for good); a late one is left to the LRU.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from flowscope.core.records import UDP

SocketKey = tuple[str, int, str, int, str, int]
LocalKey = tuple[str, int, str, int]


@dataclass(slots=True)
class SocketOwner:
    """The process behind one socket, and how the socket came to be."""

    pid: int
    comm: str
    container_id: str
    event: str  # connect (this end initiated), accept (the peer did), udp
    closed_at: float = 0.0
    # this owner's record keys as JSON members for the source and destination side,
    # rendered on first use (enriching.process_json)
    json: tuple[bytes, bytes] | None = field(default=None, repr=False, compare=False)


class SocketTable:
    """Bounded (LRU) map of sockets to their owning process."""

    def __init__(
        self, max_entries: int, grace: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._grace = grace
        self._clock = clock
        self._sockets: OrderedDict[SocketKey, SocketOwner] = OrderedDict()
        self._locals: OrderedDict[LocalKey, SocketOwner] = OrderedDict()
        # local end → the full key of the last connect event from it (in _sockets while
        # that entry is; no entry of its own towards the bound)
        self._dialled: dict[LocalKey, SocketKey] = {}
        # UDP local end → its exact keys: every UDP key of _sockets, while it is there
        # (what a UDP close expires; within the table's bound)
        self._udp_ends: dict[LocalKey, set[SocketKey]] = {}
        # (forget at, arrival, key, owner), a heap: a close applied late (see the module)
        # may be due before closes that came after it. An item whose entry was evicted or
        # replaced is stale (expire() skips it); the stale ones are dropped when the heap
        # outgrows twice the bound, so it holds at most that many items and owners
        self._closing: list[tuple[float, int, SocketKey, SocketOwner]] = []
        self._arrivals = itertools.count()
        # table key (as _sockets or _locals has it) → when a close with no entry came
        self._closed_early: OrderedDict[tuple, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sockets) + len(self._locals)

    def learn(self, event: dict) -> None:
        """Apply one raw socket event (a validated ``RawSocket`` wire dict)."""
        key: SocketKey = (
            event["observer"], event["proto"], event["src"], event["sport"],
            event["dst"], event["dport"],
        )  # fmt: skip
        if event["event"] == "close":
            self._close(key, event["pid"])
            return
        owner = SocketOwner(event["pid"], event["comm"], event.get("container_id", ""),
                            event["event"])  # fmt: skip
        if _unconnected(event["dst"]):
            self._put(self._locals, key[:4], owner)
        else:
            # indexed first: _put may evict this very key (bound 1), and its _forget
            # then takes it out of the indexes again
            if key[1] == UDP:
                self._udp_ends.setdefault(key[:4], set()).add(key)
            if owner.event == "connect":
                self._dialled[key[:4]] = key
            self._put(self._sockets, key, owner)
        if self._closed_early:
            closed_at = self._closed_early.pop(_table_key(key), None)
            if closed_at is not None:
                self._closes(key, owner, closed_at)

    def find(
        self, observer: str, proto: int, laddr: str, lport: int, raddr: str, rport: int
    ) -> SocketOwner | None:
        """The process owning local (laddr, lport) talking to (raddr, rport) on a node."""
        key = (observer, proto, laddr, lport, raddr, rport)
        owner = self._sockets.get(key)
        if owner is not None:
            self._sockets.move_to_end(key)
            return owner
        if self._locals:
            lkey = (observer, proto, laddr, lport)
            owner = self._locals.get(lkey)
            if owner is not None:
                self._locals.move_to_end(lkey)
        return owner

    @property
    def dialling(self) -> bool:
        """Whether any connected socket's dialled remote is known."""
        return bool(self._dialled)

    def dialled(
        self, observer: str, proto: int, laddr: str, lport: int
    ) -> tuple[str, int, SocketOwner] | None:
        """(remote address, remote port, owner) of the connection the socket at local
        (laddr, lport) on a node last initiated, while its entry is held."""
        key = self._dialled.get((observer, proto, laddr, lport))
        if key is None:
            return None
        owner = self._sockets.get(key)
        if owner is None or owner.event != "connect":
            return None
        self._sockets.move_to_end(key)
        return key[4], key[5], owner

    def expire(self) -> int:
        """Forget sockets closed more than ``grace`` seconds ago; returns how many."""
        now = self._clock()
        early = self._closed_early
        while early and next(iter(early.values())) + self._grace <= now:
            early.popitem(last=False)
        gone = 0
        while self._closing and self._closing[0][0] <= now:
            _, _, key, owner = heapq.heappop(self._closing)
            if self._sockets.get(key) is owner:
                del self._sockets[key]
                self._forget(key)
                gone += 1
            elif self._locals.get(key[:4]) is owner:
                del self._locals[key[:4]]
                gone += 1
        return gone

    def _close(self, key: SocketKey, pid: int) -> None:
        """Start the grace of the socket a close names: its exact entry only. A close
        is sent for a TCP connection (local → remote); with no entry for it (its
        ``accept`` missed or evicted) it must not expire the listener that answers for
        the local end — every other connection to that port joins through it. A UDP
        close (remote unspecified) names the UDP entries of its local end that are
        its socket's (``pid``: the close's owner; see the module). A close that finds
        no entry is remembered for the one it names (see the module)."""
        if _unconnected(key[4]):
            found = self._local_entries(key, pid)
        else:
            owner = self._sockets.get(key)
            found = [] if owner is None else [(key, owner)]
        if not found:
            early = self._closed_early
            early.setdefault(_table_key(key), self._clock())
            if len(early) > self._max:
                early.popitem(last=False)
            return
        now = self._clock()
        for entry_key, owner in found:
            if not owner.closed_at:
                self._closes(entry_key, owner, now)

    def _local_entries(self, key: SocketKey, pid: int) -> list[tuple[SocketKey, SocketOwner]]:
        """The entries a close with an unspecified remote names: its local end's and,
        for UDP, the exact ones of that local end (the kernel closes a UDP socket once,
        whatever peers it reported) whose owner is ``pid``, the close's, or unknown —
        all of them when none is (a local end shared by several sockets: see the
        module)."""
        owner = self._locals.get(key[:4])
        found = [] if owner is None else [(key, owner)]
        if key[1] == UDP:
            sockets = self._sockets
            exact = [(each, sockets[each]) for each in self._udp_ends.get(key[:4], ())]
            found += [item for item in exact if item[1].pid in (pid, 0)] or exact
        return found

    def _closes(self, key: SocketKey, owner: SocketOwner, closed_at: float) -> None:
        """``owner``, the entry for ``key``, was closed at ``closed_at``: its grace."""
        owner.closed_at = closed_at
        entry = (closed_at + self._grace, next(self._arrivals), key, owner)
        heapq.heappush(self._closing, entry)
        if len(self._closing) > 2 * self._max:
            self._drop_stale_closes()

    def _drop_stale_closes(self) -> None:
        """Keep only the pending closes of entries the table still holds. Without this
        the heap would grow with the close rate (one item per close until its grace
        ends, each keeping its owner) rather than with the bound: each held entry has at
        most one item, so at most ``max_entries`` remain, and the next rebuild is that
        many closes away."""
        sockets, locals_ = self._sockets, self._locals
        self._closing = [
            entry
            for entry in self._closing
            if sockets.get(entry[2]) is entry[3] or locals_.get(entry[2][:4]) is entry[3]
        ]
        heapq.heapify(self._closing)

    def _put(self, table: OrderedDict, key: tuple, owner: SocketOwner) -> None:
        table[key] = owner
        table.move_to_end(key)
        while len(self._sockets) + len(self._locals) > self._max:
            if len(self._sockets) >= len(self._locals):
                self._forget(self._sockets.popitem(last=False)[0])
            else:
                self._locals.popitem(last=False)

    def _forget(self, key: SocketKey) -> None:
        """Drop the entry ``key``, just gone from ``_sockets``, from the other indexes."""
        if self._dialled.get(key[:4]) == key:
            del self._dialled[key[:4]]
        if key[1] == UDP:
            ends = self._udp_ends[key[:4]]
            ends.discard(key)
            if not ends:
                del self._udp_ends[key[:4]]


def _table_key(key: SocketKey) -> tuple:
    """The key a socket event's entry has: its local end when it is unconnected."""
    return key[:4] if _unconnected(key[4]) else key


def _unconnected(remote: str) -> bool:
    """Whether a socket event's remote address is empty or unspecified (a listener or
    an unconnected UDP socket: keyed by its local end)."""
    return not remote or remote in ("0.0.0.0", "::")
