"""Interface selection and link-event handling (attacher behind its Protocol seam)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from flowscope.collector.attaching import AttachError
from flowscope.collector.link_watching import (
    FiltersRemoved,
    InterfaceSelection,
    LinkEvent,
    LinkWatcher,
    watched_event,
)
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry
from pyroute2.netlink.rtnl.tcmsg import tcmsg


def test_default_selection_is_everything_but_lo_and_bridges() -> None:
    sel = InterfaceSelection()
    assert sel.wants("eth0", "") and sel.wants("veth1234", "veth")
    assert not sel.wants("lo", "") and not sel.wants("cni0", "bridge")
    assert InterfaceSelection(skip_bridges=False).wants("cni0", "bridge")


def test_include_and_exclude_globs() -> None:
    sel = InterfaceSelection(include=("eth*", "veth*"), exclude=("lo", "veth-skip*"))
    assert sel.wants("eth1", "") and sel.wants("veth9", "veth")
    assert not sel.wants("wlan0", "") and not sel.wants("veth-skip1", "veth")


@dataclass
class RecordingAttacher:
    attached: list[str] = field(default_factory=list)
    forgotten: list[int] = field(default_factory=list)
    detached: list[int] = field(default_factory=list)
    on: set[int] = field(default_factory=set)
    repaired: list[str] = field(default_factory=list)

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attached.append(ifname if ethernet else f"{ifname} (ip)")
        if ifname == "gone0":
            return False
        self.on.add(ifindex)
        return True

    def detach(self, ifindex: int) -> bool:
        self.detached.append(ifindex)
        self.on.discard(ifindex)
        return True

    def repair(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.repaired.append(ifname if ethernet else f"{ifname} (ip)")
        if ifname == "ifb0":
            self.on.discard(ifindex)
            raise AttachError(ifname, "it has an 'ingress' qdisc where clsact goes; left alone")
        return True

    def forget(self, ifindex: int) -> None:
        self.forgotten.append(ifindex)
        self.on.discard(ifindex)


def test_events_attach_once_and_forget_removed() -> None:
    attacher = RecordingAttacher()
    metrics = CollectorMetrics.create(CollectorRegistry())
    watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
    watcher.apply(LinkEvent(True, 5, "veth5", "veth"))
    watcher.apply(LinkEvent(True, 5, "veth5", "veth"))  # state change: no second attach
    watcher.apply(LinkEvent(True, 6, "br0", "bridge"))
    watcher.apply(LinkEvent(True, 7, "gone0", "veth"))  # vanished before attach
    watcher.apply(LinkEvent(True, 8, "wg0", "wireguard", 65534))  # no Ethernet header
    watcher.apply(LinkEvent(True, 9, "ib0", "", 32))  # InfiniBand: not supported
    assert attacher.attached == ["veth5", "gone0", "wg0 (ip)"]
    assert metrics.interfaces_attached._value.get() == 2
    watcher.apply(LinkEvent(False, 8, "wg0", "wireguard", 65534))
    watcher.apply(LinkEvent(False, 5, "veth5", "veth"))
    watcher.apply(LinkEvent(False, 6, "br0", "bridge"))  # never attached: nothing to forget
    assert attacher.forgotten == [8, 5]
    assert metrics.interfaces_attached._value.get() == 0


class HeldAttacher:
    """Attaches only once the event loop has run a callback meanwhile (``go``), so an
    attach made on the loop's own thread would wait out the 5 s and say so."""

    def __init__(self) -> None:
        self.attaching = threading.Event()
        self.go = threading.Event()
        self.loop_ran_meanwhile: list[bool] = []

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attaching.set()
        self.loop_ran_meanwhile.append(self.go.wait(5))
        return True

    def forget(self, ifindex: int) -> None:
        pass


async def test_events_are_applied_off_the_event_loop() -> None:
    attacher = HeldAttacher()
    watcher = LinkWatcher(
        attacher, InterfaceSelection(), CollectorMetrics.create(CollectorRegistry())
    )
    catching_up = asyncio.create_task(watcher.catch_up([LinkEvent(True, 5, "veth5", "veth")]))
    assert await asyncio.to_thread(attacher.attaching.wait, 5)
    attacher.go.set()  # only reachable while the attach waits on another thread
    await catching_up
    assert attacher.loop_ran_meanwhile == [True]


async def test_lost_events_are_followed_by_a_listing() -> None:
    # The listing (this machine's real links) has no index 2**30: the interface an event
    # attached is gone by the time of the listing, so it is forgotten, after the events.
    attacher = RecordingAttacher()
    watcher = LinkWatcher(
        attacher, InterfaceSelection(include=("flowscope-none*",)),
        CollectorMetrics.create(CollectorRegistry()),
    )  # fmt: skip
    events: list[LinkEvent | None] = [LinkEvent(True, 2**30, "flowscope-none0", "veth"), None]
    await watcher.catch_up(events, overflowed=True)
    assert attacher.attached == ["flowscope-none0"]
    assert attacher.forgotten == [2**30]
    await watcher.catch_up([LinkEvent(True, 2**30 + 1, "flowscope-none1", "veth")])
    assert attacher.forgotten == [2**30]  # no listing without an overflow


def watching(selection: InterfaceSelection | None = None) -> tuple[LinkWatcher, RecordingAttacher]:
    attacher = RecordingAttacher()
    metrics = CollectorMetrics.create(CollectorRegistry())
    return LinkWatcher(attacher, selection or InterfaceSelection(), metrics), attacher


def attached_gauge(watcher: LinkWatcher) -> float:
    return float(watcher._metrics.interfaces_attached._value.get())


def test_loopback_is_never_attached_even_when_selected() -> None:
    """A packet on lo passes TC egress and then TC ingress: it would count twice."""
    for selection in (InterfaceSelection(exclude=("veth*",)), InterfaceSelection(("lo*",), ())):
        watcher, attacher = watching(selection)
        watcher.apply(LinkEvent(True, 1, "lo", "", 772))
        watcher.apply(LinkEvent(True, 2, "lo2", "dummy", 1))
        assert attacher.attached == ["lo2"] and attacher.on == {2}


def test_devices_stacked_on_an_attached_lower_are_skipped() -> None:
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    for index, kind in enumerate(("macvlan", "ipvlan", "vlan", "macvtap"), start=3):
        watcher.apply(LinkEvent(True, index, f"up{index}", kind, lower=2))
    watcher.apply(LinkEvent(True, 9, "vlan9", "vlan", lower=3))  # on a skipped macvlan
    assert attacher.attached == ["eth0"] and attacher.on == {2}


def test_pod_veths_are_attached_as_before() -> None:
    """A veth's IFLA_LINK is its peer: in a pod's namespace, not a stack; both ends here,
    one end attached (test_link_selection_veth_pairs.py)."""
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    watcher.apply(LinkEvent(True, 5, "veth5", "veth", lower=0))  # peer in a pod
    watcher.apply(LinkEvent(True, 6, "vetha", "veth", lower=7))  # both ends here
    watcher.apply(LinkEvent(True, 7, "vethb", "veth", lower=6))
    watcher.apply(LinkEvent(True, 8, "veth8", "veth", master=4))  # a bridge port
    assert attacher.on == {2, 5, 7, 8}


def test_a_device_stacked_on_an_excluded_lower_is_attached() -> None:
    watcher, attacher = watching(InterfaceSelection(exclude=("lo", "eth0")))
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    watcher.apply(LinkEvent(True, 3, "mv0", "macvlan", lower=2))
    assert attacher.attached == ["mv0"] and attacher.on == {3}


def test_a_bond_is_detached_when_a_slave_is_attached_and_back_when_none_is() -> None:
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 5, "bond0", "bond"))  # no slave yet: attached
    watcher.apply(LinkEvent(True, 6, "bond0.100", "vlan", lower=5))  # on an attached bond
    assert attacher.on == {5}
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    watcher.apply(LinkEvent(True, 2, "eth0", "", master=5))  # enslaved after
    assert attacher.on == {2} and attacher.detached == [5]
    watcher.apply(LinkEvent(True, 3, "eth1", "", master=5))  # listed enslaved
    assert attacher.on == {2, 3}
    watcher.apply(LinkEvent(True, 2, "eth0", ""))  # released: eth1 still under the bond
    assert attacher.on == {2, 3}
    watcher.apply(LinkEvent(False, 3, "eth1", ""))  # the last slave gone
    assert attacher.on == {2, 5}
    assert attached_gauge(watcher) == 2


def test_a_team_listed_after_its_slaves_is_skipped() -> None:
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 2, "eth0", "", master=4))
    watcher.apply(LinkEvent(True, 4, "team0", "team"))
    watcher.apply(LinkEvent(True, 4, "team0", "team"))  # a state change: nothing new
    assert attacher.attached == ["eth0"]


def tc_message(event: str, index: int, parent: int) -> tcmsg:
    msg = tcmsg()
    msg["index"], msg["parent"], msg["event"] = index, parent, event
    return msg


def test_tc_deletions_on_clsact_are_filter_losses() -> None:
    """The clsact qdisc deleted, or filters removed from one of its hooks."""
    assert watched_event(tc_message("RTM_DELQDISC", 3, 0xFFFFFFF1)) == FiltersRemoved(3)
    assert watched_event(tc_message("RTM_DELTFILTER", 4, 0xFFFFFFF2)) == FiltersRemoved(4)
    assert watched_event(tc_message("RTM_DELTFILTER", 5, 0xFFFFFFF3)) == FiltersRemoved(5)
    assert watched_event(tc_message("RTM_DELQDISC", 3, 0xFFFFFFFF)) is None  # the root qdisc
    assert watched_event(tc_message("RTM_DELTFILTER", 3, 0x10000)) is None  # under 1:
    assert watched_event(tc_message("RTM_NEWQDISC", 3, 0xFFFFFFF1)) is None
    assert watched_event(tc_message("RTM_NEWTFILTER", 3, 0xFFFFFFF2)) is None


async def test_attached_interfaces_whose_filters_were_removed_are_repaired() -> None:
    watcher, attacher = watching()
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    watcher.apply(LinkEvent(True, 3, "wg0", "wireguard", 65534))
    watcher.apply(LinkEvent(True, 4, "cni0", "bridge"))  # not attached
    watcher.apply(LinkEvent(True, 5, "ifb0", ""))
    await watcher.catch_up([FiltersRemoved(2), FiltersRemoved(3), FiltersRemoved(4),
                            FiltersRemoved(9), FiltersRemoved(5)])  # fmt: skip
    assert attacher.repaired == ["eth0", "wg0 (ip)", "ifb0"]
    # Could not be attached again: counted, no longer attached, not tried again.
    assert watcher._metrics.attach_errors._value.get() == 1
    assert attached_gauge(watcher) == 2 and attacher.on == {2, 3}
    await watcher.catch_up([FiltersRemoved(5)])
    assert attacher.repaired == ["eth0", "wg0 (ip)", "ifb0"]


def test_renamed_interfaces_follow_the_patterns() -> None:
    """A rename is an RTM_NEWLINK of a known index: out of the selection it is detached
    (a device stacked on it is then attached), back in it is attached again."""
    watcher, attacher = watching(InterfaceSelection(exclude=("lo", "skip*")))
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    watcher.apply(LinkEvent(True, 3, "eth0.7", "vlan", lower=2))
    assert attacher.on == {2}
    watcher.apply(LinkEvent(True, 2, "skip0", ""))
    assert attacher.detached == [2] and attacher.on == {3}
    watcher.apply(LinkEvent(True, 2, "skip0", ""))  # a state change: nothing new
    assert attacher.detached == [2] and attacher.attached == ["eth0", "eth0.7"]
    watcher.apply(LinkEvent(True, 2, "eth0", ""))
    assert attacher.on == {2} and attacher.detached == [2, 3]
    assert attached_gauge(watcher) == 1
