"""Attach the flow program to interfaces through TC clsact, and take it away again.

Every filter flowscope adds is recognisable: kind ``bpf``, priority :data:`FILTER_PRIO`,
handle :data:`FILTER_HANDLE`, protocol ETH_P_ALL and a name starting with
:data:`FILTER_NAME_PREFIX`. On SIGTERM the collector removes the filters it added; bcc's
cleanup does not. After a crash (SIGKILL) the next start finds filters carrying that
priority/handle or name on every interface and removes them before attaching anew.

The clsact qdisc itself is left in place: it is harmless when empty, and another
program (a CNI, for example) may have added filters to it meanwhile. Another program may
also take flowscope's filters away (delete the clsact qdisc, flush a hook): link watching
sees the TC event and :meth:`Attacher.repair` attaches again.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowscope.core.errors import FlowscopeError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.netlink import Netlink
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("flowscope.collector.attaching")

FILTER_PRIO = 0x2F5C  # fixed and unusual, so it neither collides nor hides other filters
FILTER_HANDLE = 0xF5C0
FILTER_NAME_PREFIX = "flowscope"
ETH_P_ALL = 0x0003
TC_H_INGRESS = 0xFFFFFFF1  # where clsact (or a legacy ingress qdisc) hangs
PARENT_INGRESS = 0xFFFFFFF2  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
PARENT_EGRESS = 0xFFFFFFF3  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)
HOOKS = (("ingress", PARENT_INGRESS), ("egress", PARENT_EGRESS))


class AttachError(FlowscopeError):
    """The programs could not be attached to an interface that is still there; nothing
    of flowscope's is left on it."""

    def __init__(self, ifname: str, problem: str) -> None:
        self.ifname = ifname
        self.problem = problem
        super().__init__(f"cannot attach to {ifname}: {problem}")


class Attaching(Protocol):
    """What link watching needs from an attacher (a seam for unit tests)."""

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool: ...

    def detach(self, ifindex: int) -> bool: ...

    def repair(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool: ...

    def forget(self, ifindex: int) -> None: ...


@dataclass(slots=True)
class Attacher:
    """Adds and removes flowscope's TC filters in the current network namespace."""

    ingress_fd: int
    egress_fd: int
    ipr: Any = field(default_factory=Netlink)
    ingress_ip_fd: int = -1  # programs for devices without an Ethernet header
    egress_ip_fd: int = -1
    attached: dict[int, str] = field(default_factory=dict)  # ifindex → name
    # Link watching attaches on a worker thread while stopping detaches on another: one
    # operation at a time, and none after detach_all (its filters would outlive the run).
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _detached: bool = field(default=False, init=False)
    # A program that removes every foreign filter as it reconciles would meet each
    # repair with another removal: one line per interface a minute, not one per round.
    _repaired: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(log, interval=60.0), init=False, repr=False
    )

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        """Add clsact (if missing) and both filters; False if the interface vanished.

        Both filters or none: :class:`AttachError` when the interface is there but
        cannot take them (a foreign ``ingress`` qdisc, a clashing filter), with nothing
        of flowscope's left on it. ``ethernet``: the device's frames start with an Ethernet header; otherwise the
        IP-header programs are used (tun, WireGuard, IP-in-IP). After :meth:`detach_all`
        nothing is attached any more (False).
        """
        with self._lock:
            if self._detached:
                log.info("not attached: the filters are being removed", extra={"ifname": ifname})
                return False
            return self._attach(ifindex, ifname, ethernet)

    def _attach(self, ifindex: int, ifname: str, ethernet: bool) -> bool:
        fds = (
            {"ingress": self.ingress_fd, "egress": self.egress_fd}
            if ethernet
            else {"ingress": self.ingress_ip_fd, "egress": self.egress_ip_fd}
        )
        added: list[int] = []
        try:
            self._ensure_clsact(ifindex, ifname)
            for direction, parent in HOOKS:
                self._add_filter(
                    ifindex, parent, fds[direction], f"{FILTER_NAME_PREFIX}-{direction}"
                )
                added.append(parent)
        except NetlinkError as e:
            # Half attached counts each packet one way only, and an untracked filter
            # would outlive the run: take back what was added.
            for parent in added:
                self._delete_filter(ifindex, parent, FILTER_PRIO, FILTER_HANDLE)
            if not self._exists(ifindex):
                log.info("interface gone before attach", extra={"ifname": ifname})
                return False
            raise AttachError(ifname, f"netlink: {e}") from e
        self.attached[ifindex] = ifname
        log.info("attached", extra={"ifname": ifname, "ifindex": ifindex})
        return True

    def detach(self, ifindex: int) -> bool:
        """Remove this attacher's filters from one interface (it is no longer wanted:
        a stacked device whose lower device is attached); False if none were there."""
        with self._lock:
            name = self.attached.pop(ifindex, None)
            if name is None:
                return False
            self._remove_ours(ifindex)
        log.info("detached", extra={"ifname": name, "ifindex": ifindex})
        return True

    def repair(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        """Attach an attached interface again if its filters are no longer both there;
        True when it did.

        Another program deleting the clsact qdisc (a CNI cleaning up, ``tc qdisc del``) or
        flushing a hook takes flowscope's filters with it, and the interface would count
        nothing until the collector restarts. :class:`AttachError` as for :meth:`attach`
        (then the interface is no longer tracked as attached).
        """
        with self._lock:
            if self._detached or ifindex not in self.attached or self._intact(ifindex):
                return False
            self._remove_ours(ifindex)  # the other hook's filter, if only one was flushed
            del self.attached[ifindex]
            if not self._attach(ifindex, ifname, ethernet):
                return False
        self._repaired.warning(
            ifname,
            "TC filters removed by another program; attached again",
            ifname=ifname,
            ifindex=ifindex,
        )
        return True

    def forget(self, ifindex: int) -> None:
        """The interface is gone (its filters went with it): stop tracking it."""
        with self._lock:
            name = self.attached.pop(ifindex, None)
        if name is not None:
            log.info("interface removed", extra={"ifname": name, "ifindex": ifindex})

    def detach_all(self) -> int:
        """Remove every filter this attacher added; returns how many interfaces.

        Waits for an attach under way to finish, and stops any later one.
        """
        count = 0
        with self._lock:
            self._detached = True
            for ifindex in list(self.attached):
                if self._remove_ours(ifindex):
                    count += 1
                self.attached.pop(ifindex, None)
        log.info("filters removed", extra={"interfaces": count})
        return count

    def remove_leftovers(self, ifindexes: Iterable[int]) -> int:
        """Remove flowscope filters an earlier (crashed) run left; returns how many."""
        removed = 0
        for ifindex in ifindexes:
            for _direction, parent in HOOKS:
                for prio, handle in self._our_filters(ifindex, parent):
                    if self._delete_filter(ifindex, parent, prio, handle):
                        removed += 1
        return removed

    def close(self) -> None:
        with self._lock:
            self.ipr.close()

    # ------------------------------------------------------------ netlink details

    def _ensure_clsact(self, ifindex: int, ifname: str) -> None:
        """Add clsact; when the ingress slot is taken, it must be a clsact already.

        A legacy ``ingress`` qdisc (shaping through IFB, an older CNI) takes the same
        slot (ffff:) and has no egress hook: it is the user's, so it is left alone and
        the interface is not attached.
        """
        try:
            self.ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            kind = self._ingress_qdisc_kind(ifindex)
            if kind != "clsact":
                raise AttachError(
                    ifname, f"it has an {kind!r} qdisc where clsact goes; left alone"
                ) from e

    def _ingress_qdisc_kind(self, ifindex: int) -> str | None:
        for msg in self.ipr.get_qdiscs(index=ifindex):
            if msg["parent"] == TC_H_INGRESS:
                return str(msg.get_attr("TCA_KIND"))
        return None

    def _exists(self, ifindex: int) -> bool:
        try:
            return bool(self.ipr.get_links(ifindex))
        except NetlinkError:
            return False

    def _add_filter(self, ifindex: int, parent: int, fd: int, name: str) -> None:
        self.ipr.tc(
            "add-filter",
            "bpf",
            ifindex,
            FILTER_HANDLE,
            fd=fd,
            name=name,
            parent=parent,
            prio=FILTER_PRIO,
            protocol=ETH_P_ALL,
            classid=1,
            direct_action=True,
        )

    def _intact(self, ifindex: int) -> bool:
        """Both of this attacher's filters are on the interface."""
        ours = (FILTER_PRIO, FILTER_HANDLE)
        return all(ours in self._our_filters(ifindex, parent) for _direction, parent in HOOKS)

    def _remove_ours(self, ifindex: int) -> bool:
        removed = False
        for _direction, parent in HOOKS:
            removed |= self._delete_filter(ifindex, parent, FILTER_PRIO, FILTER_HANDLE)
        return removed

    def _delete_filter(self, ifindex: int, parent: int, prio: int, handle: int) -> bool:
        try:
            self.ipr.tc(
                "del-filter", "bpf", ifindex, handle, parent=parent, prio=prio, protocol=ETH_P_ALL
            )
        except NetlinkError as e:
            if e.code in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False  # already gone (interface deleted, filter removed)
            raise
        return True

    def _our_filters(self, ifindex: int, parent: int) -> list[tuple[int, int]]:
        """(prio, handle) of flowscope filters on one hook, recognised by prio+handle or name."""
        try:
            msgs = self.ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError:
            return []  # no clsact qdisc on this interface: nothing of ours
        found = set()
        for msg in msgs:
            if msg.get_attr("TCA_KIND") != "bpf":
                continue
            handle = msg["handle"]
            prio = msg["info"] >> 16
            options = msg.get_attr("TCA_OPTIONS")
            name = (options.get_attr("TCA_BPF_NAME") or "") if options is not None else ""
            if handle and (
                (prio == FILTER_PRIO and handle == FILTER_HANDLE)
                or name.startswith(FILTER_NAME_PREFIX)
            ):
                found.add((prio, handle))
        return sorted(found)
