"""Keep the TC programs on the right interfaces as links come and go (netlink link events).

The watcher subscribes to RTNLGRP_LINK *before* listing the existing links, so no
interface created in between is missed; each RTM_NEWLINK for an interface not yet
attached and selected by the include/exclude patterns is attached at once (well within
the 1 s the issue asks), each RTM_DELLINK forgotten (its filters vanish with it).

Events are read on the event loop (the socket never blocks); attaching, forgetting and
listing run on a worker thread, so a burst of new interfaces (each attach is three netlink
requests, ~1 ms) does not hold up the loop's ring-buffer reads and NATS traffic meanwhile.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowscope.collector.attaching import Attaching
from flowscope.collector.metrics import CollectorMetrics
from flowscope.core.logs import RateLimitedLog
from flowscope.core.netlink import Netlink
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK
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
ETHERNET_TYPES = frozenset({1, 772})  # ARPHRD_ETHER, ARPHRD_LOOPBACK
IP_TYPES = frozenset({65534, 768, 769, 776, 519})  # NONE (tun, wg), TUNNEL, TUNNEL6, SIT, RAWIP


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """The parts of an RTM_NEWLINK / RTM_DELLINK message that matter here."""

    added: bool
    index: int
    name: str
    kind: str
    link_type: int = 1  # ARPHRD_*


def link_event(msg: Any) -> LinkEvent | None:
    """The one conversion of a pyroute2 link message; None for other messages."""
    event = msg.get("event")
    if event not in ("RTM_NEWLINK", "RTM_DELLINK"):
        return None
    info = msg.get_attr("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
    name = msg.get_attr("IFLA_IFNAME") or ""
    return LinkEvent(event == "RTM_NEWLINK", msg["index"], name, kind, msg.get("ifi_type", 1))


def listed_links() -> list[LinkEvent]:
    """The links there are now, as RTM_NEWLINK events (one netlink dump)."""
    with Netlink() as ipr:
        return [e for e in (link_event(m) for m in ipr.get_links()) if e is not None]


def link_events_socket(receive_buffer: int = 1 << 20) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to RTNLGRP_LINK.

    A plain socket read with ``recv`` and parsed by pyroute2's marshal: the same in
    pyroute2 0.8 and 0.9, and never blocking the event loop for more. Events beyond
    ``receive_buffer`` bytes waiting are lost (ENOBUFS), and the watcher lists again.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, RTMGRP_LINK))
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
        """List the links again: attach what is new, forget what vanished unseen."""
        self._resync(listed_links())

    def _resync(self, events: list[LinkEvent]) -> None:
        present = {e.index for e in events}
        for index in sorted(self._attached - present):
            self.apply(LinkEvent(False, index, "", ""))
        for event in events:
            self.apply(event)

    def apply(self, event: LinkEvent | None) -> None:
        """Attach a new selected interface, forget a removed one."""
        if event is None:
            return
        if not event.added:
            if event.index in self._attached:
                self._attached.discard(event.index)
                self._attacher.forget(event.index)
        elif event.index not in self._attached and self._selection.wants(event.name, event.kind):
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
            except NetlinkError as e:
                self._metrics.attach_errors.inc()
                log.warning("cannot attach", extra={"ifname": event.name, "error": str(e)})
        self._metrics.interfaces_attached.set(len(self._attached))

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

    async def catch_up(self, events: list[LinkEvent | None], overflowed: bool = False) -> None:
        """Apply ``events`` in order, then list the links again if some were lost.

        On a worker thread: the event loop goes on meanwhile. One catch-up at a time (the
        caller awaits it), so the watcher's state is only ever changed by one thread.
        """
        await asyncio.to_thread(self._catch_up, events, overflowed)

    def _catch_up(self, events: list[LinkEvent | None], overflowed: bool) -> None:
        for event in events:
            self.apply(event)
        if overflowed:  # the listing is newer than every event read before it
            self.resync()

    def _pending_events(self) -> tuple[list[LinkEvent | None], bool]:
        """The link events waiting on the socket; True if the kernel dropped some (ENOBUFS)."""
        events: list[LinkEvent | None] = []
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
            events.extend(link_event(msg) for msg in self._marshal.parse(data))

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
