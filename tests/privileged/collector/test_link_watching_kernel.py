"""Link watching against the kernel: links listed at start (through flowscope.core.netlink's
thread, which must inherit the caller's network namespace; the listing is handed to the
leftover removal before any attach) and links added and deleted afterwards (RTNLGRP_LINK
events on the watcher's own netlink socket), and a burst that overflows that socket
(ENOBUFS: the links are listed again), in a namespace of the test's own. The attacher
records instead of attaching: this is about the events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node, netns
from tests.support.waiting import eventually

T = TypeVar("T")


@dataclass
class RecordingAttacher:
    attached: dict[int, str] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attached[ifindex] = ifname
        return True

    def repair(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        return False  # nothing is really attached: nothing to take away

    def forget(self, ifindex: int) -> None:
        self.forgotten.append(self.attached.pop(ifindex))


@contextlib.asynccontextmanager
async def running(watcher: LinkWatcher) -> AsyncIterator[None]:
    """``watcher.run`` as a task for the block; then stopped and the watcher closed."""
    stopping = asyncio.Event()
    task = asyncio.create_task(watcher.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        await task
        watcher.close()


async def watch(node: Node) -> dict[str, Any]:
    attacher = RecordingAttacher()
    metrics = CollectorMetrics.create(CollectorRegistry())
    watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
    seen: dict[str, Any] = {}

    def before_attaching(indexes: list[int]) -> None:  # the service removes leftovers here
        seen["handed"] = sorted(indexes)
        seen["all_links"] = sorted(index for index, _name in socket.if_nameindex())
        seen["attached_before"] = len(attacher.attached)

    seen["at_start"] = watcher.start(before_attaching)
    seen["listed"] = sorted(attacher.attached.values())
    async with running(watcher):
        for name in ("lwa", "lwb"):
            await asyncio.to_thread(node.hx, "ip", "tuntap", "add", name, "mode", "tap")
        await eventually(lambda: len(attacher.attached) == 4, 5, "lwa and lwb attached")
        seen["after_add"] = sorted(attacher.attached.values())
        seen["gauge"] = metrics.interfaces_attached._value.get()
        for name in ("lwa", "lwb"):
            await asyncio.to_thread(node.hx, "ip", "link", "del", name)
        await eventually(lambda: len(attacher.forgotten) == 2, 5, "lwa and lwb forgotten")
        seen["forgotten"] = sorted(attacher.forgotten)
        seen["left"] = sorted(attacher.attached.values())
    return seen


async def overflow(node: Node) -> dict[str, Any]:
    attacher = RecordingAttacher()
    metrics = CollectorMetrics.create(CollectorRegistry())
    # The smallest receive buffer the kernel allows: a burst of new links overflows it.
    watcher = LinkWatcher(attacher, InterfaceSelection(), metrics, receive_buffer=1)
    watcher.start()
    burst = "".join(f"tuntap add ov{i}{end} mode tap\n" for i in range(10) for end in "ab")
    # While the watcher is not reading yet: the events pile up, then the kernel drops some.
    await asyncio.to_thread(
        subprocess.run, ["ip", "-n", node.host, "-batch", "-"], input=burst, text=True, check=True
    )
    async with running(watcher):
        await eventually(lambda: len(attacher.attached) == 20, 5, "all 20 attached")
    return {
        "attached": sorted(attacher.attached.values()),
        "overflows": metrics.link_event_overflows._value.get(),
    }


def in_node(node: Node, coroutine: Callable[[Node], Coroutine[Any, Any, T]]) -> T:
    """``coroutine(node)`` run to its end on a new thread inside the node's host namespace
    (with its own event loop, whose worker threads start there too); what it raised is
    raised here, and a run past 60 s fails with TimeoutError."""

    def inside() -> T:
        with netns(node.host):
            return asyncio.run(coroutine(node))

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(inside).result(timeout=60)
    finally:
        pool.shutdown(wait=False)


def test_links_listed_at_start_then_added_and_deleted_reach_the_watcher() -> None:
    with Node(tag=f"lw{os.getpid()}", ipv6=False).built(pods=0) as node:
        # Present before the watcher starts: found by listing, not by events.
        # Taps, not a veth pair: of a pair inside the namespace one end is attached.
        node.hx("ip", "tuntap", "add", "lwp", "mode", "tap")
        node.hx("ip", "tuntap", "add", "lwq", "mode", "tap")
        seen = in_node(node, watch)
    # lo is excluded and br0 is a bridge; only the node's own links, none of the test host's.
    assert seen["at_start"] == 2 and seen["listed"] == ["lwp", "lwq"]
    # Every link of the one listing (lo and br0 too: leftovers are looked for on all),
    # handed over before anything was attached.
    assert seen["handed"] == seen["all_links"] and len(seen["handed"]) == 4
    assert seen["attached_before"] == 0
    assert seen["after_add"] == ["lwa", "lwb", "lwp", "lwq"]
    assert seen["gauge"] == 4
    assert seen["forgotten"] == ["lwa", "lwb"]
    assert seen["left"] == ["lwp", "lwq"]


def test_lost_link_events_are_made_good_by_listing_again() -> None:
    with Node(tag=f"lo{os.getpid()}", ipv6=False).built(pods=0) as node:
        seen = in_node(node, overflow)
    assert seen["overflows"] >= 1, "the burst did not overflow the socket"
    assert seen["attached"] == sorted(f"ov{i}{end}" for i in range(10) for end in "ab")
