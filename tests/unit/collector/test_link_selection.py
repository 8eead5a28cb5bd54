"""Interface selection and link-event handling (attacher behind its Protocol seam)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from flowscope.collector.link_watching import InterfaceSelection, LinkEvent, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry


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

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attached.append(ifname if ethernet else f"{ifname} (ip)")
        return ifname != "gone0"

    def forget(self, ifindex: int) -> None:
        self.forgotten.append(ifindex)


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
