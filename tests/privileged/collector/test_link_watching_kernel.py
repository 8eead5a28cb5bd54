"""Link watching against the kernel: links listed at start (through flowscope.core.netlink's
thread, which must inherit the caller's network namespace) and links added and deleted
afterwards (RTNLGRP_LINK events on the watcher's own netlink socket), in a namespace of
the test's own. The attacher records instead of attaching: this is about the events."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node, netns


@dataclass
class RecordingAttacher:
    attached: dict[int, str] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attached[ifindex] = ifname
        return True

    def forget(self, ifindex: int) -> None:
        self.forgotten.append(self.attached.pop(ifindex))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``; fail naming ``what`` after 5 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while not condition():
        assert loop.time() < deadline, f"not within 5 s: {what}"
        await asyncio.sleep(0.01)


async def watch(node: Node) -> dict[str, Any]:
    attacher = RecordingAttacher()
    metrics = CollectorMetrics.create(CollectorRegistry())
    watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
    seen: dict[str, Any] = {
        "at_start": watcher.start(),
        "listed": sorted(attacher.attached.values()),
    }
    stopping = asyncio.Event()
    running = asyncio.create_task(watcher.run(stopping))
    try:
        await asyncio.to_thread(
            node.hx, "ip", "link", "add", "lwa", "type", "veth", "peer", "name", "lwb"
        )
        await until(lambda: len(attacher.attached) == 4, "lwa and lwb attached")
        seen["after_add"] = sorted(attacher.attached.values())
        seen["gauge"] = metrics.interfaces_attached._value.get()
        await asyncio.to_thread(node.hx, "ip", "link", "del", "lwa")  # takes lwb with it
        await until(lambda: len(attacher.forgotten) == 2, "lwa and lwb forgotten")
        seen["forgotten"] = sorted(attacher.forgotten)
        seen["left"] = sorted(attacher.attached.values())
    finally:
        stopping.set()
        await running
        watcher.close()
    return seen


def test_links_listed_at_start_then_added_and_deleted_reach_the_watcher() -> None:
    with Node(tag=f"lw{os.getpid()}", ipv6=False).built(pods=0) as node:
        # Present before the watcher starts: found by listing, not by events.
        node.hx("ip", "link", "add", "lwp", "type", "veth", "peer", "name", "lwq")
        outcome: dict[str, Any] = {}

        def in_node() -> None:
            try:
                with netns(node.host):
                    outcome["seen"] = asyncio.run(watch(node))
            except BaseException as e:  # re-raised in the test's thread below
                outcome["error"] = e

        thread = threading.Thread(target=in_node)
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        if "error" in outcome:
            raise outcome["error"]
    seen = outcome["seen"]
    # lo is excluded and br0 is a bridge; only the node's own links, none of the test host's.
    assert seen["at_start"] == 2 and seen["listed"] == ["lwp", "lwq"]
    assert seen["after_add"] == ["lwa", "lwb", "lwp", "lwq"]
    assert seen["gauge"] == 4
    assert seen["forgotten"] == ["lwa", "lwb"]
    assert seen["left"] == ["lwp", "lwq"]
