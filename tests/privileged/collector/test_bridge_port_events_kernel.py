"""A bridge port released and enslaved again while the collector watches.

The bridge announces its ports on the same multicast group as link events, as
RTM_NEWLINK / RTM_DELLINK messages of family AF_BRIDGE (no link kind in them): the
RTM_DELLINK of a port released from its bridge (``nomaster``, or the bridge deleted) says
the port left the bridge, not that the interface is gone. The real attacher, with a tiny
classifier standing in for the flow program: this is about which filters stay.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from flowscope.collector.attaching import Attacher
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node
from tests.privileged.collector.test_link_watching_kernel import in_node, running
from tests.support.waiting import eventually


async def release_and_enslave(node: Node) -> dict[str, Any]:
    from bcc import BPF

    bpf = BPF(text=b"int keep(struct __sk_buff *skb) { return -1; }")
    fd = bpf.load_func(b"keep", BPF.SCHED_CLS).fd
    attacher = Attacher(fd, fd)
    metrics = CollectorMetrics.create(CollectorRegistry())
    watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
    port = node.pods[0].host_if
    seen: dict[str, Any] = {}
    try:
        watcher.start()
        async with running(watcher):
            for master in ("nomaster", "master br0"):
                await asyncio.to_thread(node.hx, "ip", "link", "set", port, *master.split())
            # Events are applied in order: once the marker is attached, so is the rest.
            await asyncio.to_thread(node.hx, "ip", "tuntap", "add", "bpmark", "mode", "tap")
            await eventually(lambda: "bpmark" in attacher.attached.values(), 10, "bpmark")
        seen["attached"] = sorted(attacher.attached.values())
        seen["errors"] = metrics.attach_errors._value.get()
        seen["filters"] = await asyncio.to_thread(node.flowscope_filters, port)
        await asyncio.to_thread(attacher.detach_all)
        seen["left"] = await asyncio.to_thread(node.flowscope_filters, port)
    finally:
        attacher.close()
        bpf.cleanup()
    return seen


def test_a_port_leaving_its_bridge_stays_attached_and_is_detached_at_stop() -> None:
    with Node(tag=f"bp{os.getpid()}", ipv6=False).built(pods=1) as node:
        seen = in_node(node, release_and_enslave)
    assert seen["attached"] == ["bpmark", "veth10"]
    assert seen["errors"] == 0
    assert [line.split()[0] for line in seen["filters"]] == ["ingress", "egress"]
    assert seen["left"] == [], "filters outlived detach_all"
