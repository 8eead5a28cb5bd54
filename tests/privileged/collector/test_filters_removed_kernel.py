"""Another program takes flowscope's filters away from an attached interface.

A CNI cleaning up, or an operator, deletes the clsact qdisc (``tc qdisc del``) or
flushes a hook (``tc filter del dev X ingress``): flowscope's filters go with it, and
without the TC events link watching now hears the interface counted nothing until the
collector restarted. The real attacher and watcher in a namespace of the test's own; a
tiny classifier stands in for the flow program (this is about filters), and another one
plays the other program's filter, which must be left alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from flowscope.collector.attaching import PARENT_INGRESS, Attacher
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node
from tests.support.waiting import eventually


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"fscol{os.getpid()}", ipv6=False).built(pods=1) as built:
        yield built


@pytest.fixture
def classifier(node: Node) -> Iterator[int]:
    from bcc import BPF

    with node.inside():
        bpf = BPF(text=b"int keep(struct __sk_buff *skb) { return -1; }")  # TC_ACT_UNSPEC
    try:
        yield bpf.load_func(b"keep", BPF.SCHED_CLS).fd
    finally:
        bpf.cleanup()


def foreign_filter(node: Node, attacher: Attacher, fd: int) -> None:
    """Another program's filter on veth10's ingress hook (priority 1)."""
    (index,) = attacher.ipr.link_lookup(ifname="veth10")
    attacher.ipr.tc("add-filter", "bpf", index, 7, fd=fd, name="other", parent=PARENT_INGRESS,
                    prio=1, protocol=3, classid=1, direct_action=True)  # fmt: skip


def other_filters(node: Node) -> list[str]:
    out = node.hx("tc", "filter", "show", "dev", "veth10", "ingress")
    return [line for line in out.splitlines() if "other" in line]


async def removed_and_back(node: Node, *commands: tuple[str, ...]) -> None:
    for command in commands:
        await asyncio.to_thread(node.hx, *command)
    await eventually(lambda: len(node.flowscope_filters("veth10")) == 2, 5, "attached again")


async def test_filters_removed_by_another_program_are_attached_again(
    node: Node, classifier: int
) -> None:
    with node.inside():
        attacher = Attacher(classifier, classifier)
        metrics = CollectorMetrics.create(CollectorRegistry())
        watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
        assert await asyncio.to_thread(watcher.start) == 1
    stopping = asyncio.Event()
    task = asyncio.create_task(watcher.run(stopping))
    try:
        assert len(node.flowscope_filters("veth10")) == 2
        clsact = ("tc", "qdisc", "{}", "dev", "veth10", "clsact")
        await removed_and_back(node, tuple(w.format("del") for w in clsact))
        # Replaced by one of the same kind: the filters stay, nothing to do.
        await removed_and_back(node, tuple(w.format("replace") for w in clsact))
        foreign_filter(node, attacher, classifier)
        await removed_and_back(node, ("tc", "filter", "del", "dev", "veth10", "egress"))
        assert len(other_filters(node)) == 1  # a hook flushed elsewhere: theirs stays
        await removed_and_back(node, ("tc", "filter", "del", "dev", "veth10", "ingress"))
        foreign_filter(node, attacher, classifier)
        # Filters that are there stay as they are: one of each, theirs untouched.
        await asyncio.to_thread(node.hx, "tc", "filter", "del", "dev", "veth10", "ingress",
                                "prio", "1")  # fmt: skip
        foreign_filter(node, attacher, classifier)
        await asyncio.sleep(0.2)
        assert len(node.flowscope_filters("veth10")) == 2 and len(other_filters(node)) == 1
        assert metrics.attach_errors._value.get() == 0
        assert metrics.interfaces_attached._value.get() == 1
    finally:
        stopping.set()
        await task
        watcher.close()
        assert await asyncio.to_thread(attacher.detach_all) == 1
        attacher.close()
    assert node.flowscope_filters("veth10") == [] and len(other_filters(node)) == 1
