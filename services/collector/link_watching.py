"""Keep the TC programs on the right interfaces as links come and go (netlink link events).

The watcher subscribes to RTNLGRP_LINK *before* listing the existing links, so no
interface created in between is missed; each RTM_NEWLINK for an interface not yet
attached and selected by the include/exclude patterns is attached at once (well within
the 1 s the issue asks), each RTM_DELLINK forgotten (its filters vanish with it). The
socket also hears TC events (RTNLGRP_TC): when another program deletes the clsact qdisc
of an attached interface or removes filters from its hooks, flowscope's filters may
have gone with it, and the interface is attached again (else it would count nothing
until a restart).

Devices stacked on another (macvlan, ipvlan, VLAN over their lower device; a bond or team
over its slaves) are skipped while a device under them is attached, and loopback is never
attached: each packet through them would be counted twice (docs/collector.md, "No double
counting on a node"). Stacks change (a slave enslaved after its bond was attached, the
last slave released), so the devices stacked on a link are reconsidered when it changes.
A veth pair with both ends in this namespace (Cilium's cilium_host/cilium_net) is handled
as a stack too: the end with the lower index counts as stacked on its peer, so only one
end is attached (a packet sent out of one end is received by the other: counted twice).

Events are read on the event loop (the socket never blocks); attaching, forgetting and
listing run on a worker thread, so a burst of new interfaces (each attach is three netlink
requests, ~1 ms) does not hold up the loop's ring-buffer reads and NATS traffic meanwhile.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowscope.collector.attaching import (
    PARENT_EGRESS,
    PARENT_INGRESS,
    TC_H_INGRESS,
    AttachError,
    Attaching,
)
from flowscope.collector.metrics import CollectorMetrics
from flowscope.core.logs import RateLimitedLog
from flowscope.core.netlink import Netlink
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_TC
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

log = logging.getLogger("flowscope.collector.link_watching")


@dataclass(frozen=True, slots=True)
class InterfaceSelection:
    """Which interfaces get the programs: include/exclude globs, bridges or not."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ("lo",)
    skip_bridges: bool = True

    def wants(self, name: str, kind: str) -> bool:
        if self.skip_bridges and kind == "bridge":
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return any(fnmatch.fnmatchcase(name, p) for p in self.include)


# Link-layer types (linux/if_arp.h) by where the IP header starts in a TC program.
ETHERNET_TYPES = frozenset({1})  # ARPHRD_ETHER
IP_TYPES = frozenset({65534, 768, 769, 776, 519})  # NONE (tun, wg), TUNNEL, TUNNEL6, SIT, RAWIP
# A packet on lo passes TC egress (sent here) and then TC ingress: counted twice.
ARPHRD_LOOPBACK = 772
# Devices whose packets pass TC again on the one lower device they name (IFLA_LINK): sent
# through egress of both, received through ingress of both.
LINKED_KINDS = frozenset({"macvlan", "macvtap", "ipvlan", "ipvtap", "vlan"})
# Devices whose packets pass TC again on their slaves (the slaves' IFLA_MASTER).
MASTER_KINDS = frozenset({"bond", "team"})


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """The parts of an RTM_NEWLINK / RTM_DELLINK message that matter here."""

    added: bool
    index: int
    name: str
    kind: str
    link_type: int = 1  # ARPHRD_*
    lower: int = 0  # IFLA_LINK when that device is in this namespace (a veth's: its peer)
    master: int = 0  # IFLA_MASTER: the bond, team or bridge this device is enslaved to

    @property
    def under(self) -> int:
        """The one device this one counts as stacked on (0: none): a linked kind's lower
        device, or a veth's peer in this namespace when the peer has the higher index.

        Of such a pair the end with the higher index is attached: NAME in ``ip link add
        NAME type veth peer name PEER`` (the kernel registers the peer first), the end a
        CNI gives the address and routes (cilium_host), so packets forwarded into the
        pair pass only its egress, where forwarded packets are not counted.
        """
        if self.kind in LINKED_KINDS or (self.kind == "veth" and self.lower > self.index):
            return self.lower
        return 0


def link_event(msg: Any) -> LinkEvent | None:
    """The one conversion of a pyroute2 link message; None for other messages.

    A bridge announces its ports on the same group with messages of family AF_BRIDGE
    and no link kind: its RTM_DELLINK means the port left the bridge, not that the
    interface is gone (the interface's own messages are AF_UNSPEC).

    A name is any bytes but '/', ':' and blanks, and pyroute2 hands one that is not UTF-8
    over as bytes: decoded as ``os.fsdecode`` does (as ``socket.if_nameindex`` and the
    environment the patterns come from are), so the patterns can match it."""
    event = msg.get("event")
    if event not in ("RTM_NEWLINK", "RTM_DELLINK") or msg.get("family") != socket.AF_UNSPEC:
        return None
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
    name = os.fsdecode(msg.get_attr("IFLA_IFNAME") or "")
    index = msg["index"]
    lower = msg.get_attr("IFLA_LINK") or 0
    if lower == index or msg.get_attr("IFLA_LINK_NETNSID") is not None:
        lower = 0  # itself, or an index in another namespace
    master = msg.get_attr("IFLA_MASTER") or 0
    return LinkEvent(
        event == "RTM_NEWLINK", index, name, kind, msg.get("ifi_type", 1), lower, master
    )


@dataclass(frozen=True, slots=True)
class FiltersRemoved:
    """An RTM_DELQDISC of the qdisc where clsact hangs, or an RTM_DELTFILTER on a clsact
    hook: flowscope's filters on interface ``index`` may be gone."""

    index: int


WatchedEvent = LinkEvent | FiltersRemoved | None


def watched_event(msg: Any) -> WatchedEvent:
    """The one conversion of a message read from the watcher's socket."""
    event = msg.get("event")
    if event == "RTM_DELQDISC" and msg.get("parent") == TC_H_INGRESS:
        return FiltersRemoved(msg["index"])
    if event == "RTM_DELTFILTER" and msg.get("parent") in (PARENT_INGRESS, PARENT_EGRESS):
        return FiltersRemoved(msg["index"])
    return link_event(msg)


def listed_links() -> list[LinkEvent]:
    """The links there are now, as RTM_NEWLINK events (one netlink dump)."""
    with Netlink() as ipr:
        return [e for e in (link_event(m) for m in ipr.get_links()) if e is not None]


def link_events_socket(receive_buffer: int = 1 << 20) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to RTNLGRP_LINK and RTNLGRP_TC.

    A plain socket read with ``recv`` and parsed by pyroute2's marshal: the same in
    pyroute2 0.8 and 0.9, and never blocking the event loop for more. Events beyond
    ``receive_buffer`` bytes waiting are lost (ENOBUFS), and the watcher lists again.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, RTMGRP_LINK | RTMGRP_TC))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class LinkWatcher:
    """Applies link events to an attacher; ``run`` is a root task."""

    def __init__(
        self,
        attacher: Attaching,
        selection: InterfaceSelection,
        metrics: CollectorMetrics,
        receive_buffer: int = 1 << 20,
    ) -> None:
        self._receive_buffer = receive_buffer
        self._attacher = attacher
        self._selection = selection
        self._metrics = metrics
        self._attached: set[int] = set()
        self._links: dict[int, LinkEvent] = {}  # present links as last seen
        self._uppers: set[int] = set()  # those stacked on another (`under`) or a MASTER_KIND
        self._events: socket.socket | None = None
        self._marshal = MarshalRtnl()
        self._unsupported = RateLimitedLog(log, interval=3600.0)

    def start(self, before_attaching: Callable[[list[int]], object] | None = None) -> int:
        """Subscribe to link events, then attach to the existing links; returns how many.

        ``before_attaching`` gets the listed links' indexes first (the service removes a
        crashed run's filters there: one listing serves both). Blocking (a listing and an
        attach per link): the service calls it off the loop.
        """
        self._events = link_events_socket(self._receive_buffer)
        links = listed_links()
        if before_attaching is not None:
            before_attaching([e.index for e in links])
        self._resync(links)
        return len(self._attached)

    def resync(self) -> None:
        """List the links again: attach what is new, forget what vanished unseen, and
        attach again where filters were removed unseen."""
        self._resync(listed_links())
        for index in sorted(self._attached):
            self.repair(FiltersRemoved(index))

    def _resync(self, events: list[LinkEvent]) -> None:
        present = {e.index for e in events}
        for index in sorted((self._attached | self._links.keys()) - present):
            self.apply(LinkEvent(False, index, "", ""))
        for event in events:
            self.apply(event)

    def apply(self, event: LinkEvent | None) -> None:
        """Attach a new selected interface, detach one renamed out of the selection,
        forget a removed one; then reconsider the devices stacked on it."""
        if event is None:
            return
        before = self._links.pop(event.index, None)
        was_attached = event.index in self._attached
        self._uppers.discard(event.index)
        if event.added:
            self._links[event.index] = event
            if event.kind in MASTER_KINDS or event.under:
                self._uppers.add(event.index)
            if event.index not in self._attached and not self._stacked_on_attached(event):
                self._attach(event)
            elif event.index in self._attached and (
                not self._selection.wants(event.name, event.kind)
                or self._stacked_on_attached(event)
            ):  # renamed to a name the patterns leave out (udev, a CNI's final name), or a
                # veth whose peer was not known yet when it was created
                self._attacher.detach(event.index)
                self._attached.discard(event.index)
        elif event.index in self._attached:
            self._attached.discard(event.index)
            self._attacher.forget(event.index)
        old_master = before.master if before is not None else 0
        if (
            before is None
            or not event.added
            or was_attached != (event.index in self._attached)
            or old_master != event.master
            or before.lower != event.lower
        ):  # not on every state change: an upper that failed to attach is not retried
            self._restack(event.index, old_master)
        self._metrics.interfaces_attached.set(len(self._attached))

    def repair(self, event: FiltersRemoved) -> None:
        """Attach an attached interface again if another program removed its filters."""
        link = self._links.get(event.index)
        if event.index not in self._attached or link is None:
            return
        try:
            self._attacher.repair(link.index, link.name, link.link_type in ETHERNET_TYPES)
        except (AttachError, NetlinkError) as e:
            self._attached.discard(link.index)  # counts nothing now; listed as an error
            self._metrics.attach_errors.inc()
            self._metrics.interfaces_attached.set(len(self._attached))
            log.warning("cannot attach again", extra={"ifname": link.name, "error": str(e)})

    def _attach(self, event: LinkEvent) -> None:
        if not self._selection.wants(event.name, event.kind):
            return
        if event.link_type == ARPHRD_LOOPBACK:
            self._unsupported.warning(
                "loopback", "loopback is never attached: each packet would be counted twice",
                ifname=event.name,
            )  # fmt: skip
            return
        if event.link_type not in ETHERNET_TYPES | IP_TYPES:
            self._unsupported.warning(
                f"link-type-{event.link_type}", "link type not supported; not attached",
                ifname=event.name, link_type=event.link_type,
            )  # fmt: skip
            return
        try:
            ethernet = event.link_type in ETHERNET_TYPES
            if self._attacher.attach(event.index, event.name, ethernet):
                self._attached.add(event.index)
        except (AttachError, NetlinkError) as e:
            self._metrics.attach_errors.inc()
            log.warning("cannot attach", extra={"ifname": event.name, "error": str(e)})

    # ------------------------------------------------------------ stacked devices

    def _restack(self, index: int, old_master: int) -> None:
        """Attach or detach the devices stacked on ``index`` (and on those, in turn) now
        that it changed: attached, forgotten, enslaved or released (``old_master``)."""
        todo = self._stacked_on(index) | ({old_master} & self._uppers)
        seen = {index}
        while todo:
            upper = todo.pop()
            seen.add(upper)
            event = self._links[upper]
            covered = self._stacked_on_attached(event)
            if covered and upper in self._attached:
                self._attacher.detach(upper)
                self._attached.discard(upper)
            elif not covered and upper not in self._attached:
                self._attach(event)
            todo |= self._stacked_on(upper) - seen

    def _stacked_on(self, index: int) -> set[int]:
        """The present devices stacked directly on ``index``."""
        found = {u for u in self._uppers if self._links[u].under == index}
        link = self._links.get(index)
        master = self._links.get(link.master) if link is not None else None
        if master is not None and master.kind in MASTER_KINDS:
            found.add(master.index)
        return found

    def _lowers(self, event: LinkEvent) -> set[int]:
        """The present devices ``event``'s device is stacked on."""
        if event.kind in MASTER_KINDS:
            return {i for i, link in self._links.items() if link.master == event.index}
        return {event.under} & self._links.keys()

    def _stacked_on_attached(self, event: LinkEvent, seen: frozenset[int] = frozenset()) -> bool:
        """A device under ``event``'s, however deep, has the programs: its packets are
        counted there already."""
        for lower in self._lowers(event) - seen:
            if lower in self._attached or self._stacked_on_attached(
                self._links[lower], seen | {event.index}
            ):
                return True
        return False

    async def run(self, stopping: asyncio.Event) -> None:
        """Apply link events as they arrive until ``stopping`` is set."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        assert self._events is not None, "start() first"
        fd = self._events.fileno()
        loop.add_reader(fd, ready.set)
        try:
            while not stopping.is_set():
                waiter = asyncio.ensure_future(ready.wait())
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stop.cancel()
                if ready.is_set():
                    ready.clear()
                    await self.catch_up(*self._pending_events())
        finally:
            loop.remove_reader(fd)

    async def catch_up(self, events: list[WatchedEvent], overflowed: bool = False) -> None:
        """Apply ``events`` in order, then list the links again if some were lost.

        On a worker thread: the event loop goes on meanwhile. One catch-up at a time (the
        caller awaits it), so the watcher's state is only ever changed by one thread.
        """
        await asyncio.to_thread(self._catch_up, events, overflowed)

    def _catch_up(self, events: list[WatchedEvent], overflowed: bool) -> None:
        for event in events:
            if isinstance(event, FiltersRemoved):
                self.repair(event)
            else:
                self.apply(event)
        if overflowed:  # the listing is newer than every event read before it
            self.resync()

    def _pending_events(self) -> tuple[list[WatchedEvent], bool]:
        """The events waiting on the socket; True if the kernel dropped some (ENOBUFS)."""
        events: list[WatchedEvent] = []
        overflowed = False
        assert self._events is not None
        while True:
            try:
                data = self._events.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return events, overflowed
            except OSError as e:  # ENOBUFS: events were lost; resynchronise by listing
                log.warning("link events overflowed; listing links again", extra={"error": str(e)})
                self._metrics.link_event_overflows.inc()
                overflowed = True
                continue
            events.extend(watched_event(msg) for msg in self._marshal.parse(data))

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
