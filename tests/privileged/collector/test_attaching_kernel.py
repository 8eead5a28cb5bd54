"""The attacher against the kernel when link watching and stopping overlap.

Link watching attaches on a worker thread while stopping detaches on another; filters
added by an attach that overlaps ``detach_all`` must not outlive the run. A tiny
classifier (returns TC_ACT_OK) stands in for the flow program: this is about filters.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flowscope.collector.attaching import Attacher

from tests.privileged.collector.node import Node


class HeldNetlink:
    """The attacher's real netlink handle, except that once ``armed`` the next filter
    added waits for ``go``: an attach caught before its filters."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.armed = False
        self.waiting = threading.Event()
        self.go = threading.Event()

    def tc(self, command: str, *args: Any, **kwargs: Any) -> Any:
        if command == "add-filter" and self.armed and not self.waiting.is_set():
            self.waiting.set()
            self.go.wait(10)
        return self._real.tc(command, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"at{os.getpid()}", ipv6=False).built(pods=0) as built:
        built.hx("ip", "link", "add", "ata", "type", "veth", "peer", "name", "atb")
        yield built


@pytest.fixture
def classifier(node: Node) -> Iterator[int]:
    from bcc import BPF

    with node.inside():
        bpf = BPF(text=b"int keep(struct __sk_buff *skb) { return 0; }")
    try:
        yield bpf.load_func(b"keep", BPF.SCHED_CLS).fd
    finally:
        bpf.cleanup()


def test_attach_overlapping_detach_all_leaves_no_filter(node: Node, classifier: int) -> None:
    with node.inside():
        attacher = Attacher(classifier, classifier)
    held = HeldNetlink(attacher.ipr)
    attacher.ipr = held
    try:
        (a,) = held.link_lookup(ifname="ata")
        assert attacher.attach(a, "ata")
        assert len(node.flowscope_filters("ata")) == 2
        (b,) = held.link_lookup(ifname="atb")
        held.armed = True
        attaching = threading.Thread(target=lambda: attacher.attach(b, "atb"))
        attaching.start()
        assert held.waiting.wait(10), "attach never reached its first filter"
        detached: list[int] = []
        detaching = threading.Thread(target=lambda: detached.append(attacher.detach_all()))
        detaching.start()
        # detach_all must wait for the attach under way rather than miss its filters.
        detaching.join(0.5)
        assert detaching.is_alive(), "detach_all ran while an attach was half done"
        held.go.set()
        attaching.join(10)
        detaching.join(10)
        assert detached == [2]
        assert node.flowscope_filters("ata") == [] and node.flowscope_filters("atb") == []
        # Once detached, nothing more is attached (the collector is stopping).
        assert not attacher.attach(b, "atb")
        assert node.flowscope_filters("atb") == [] and attacher.attached == {}
    finally:
        held.go.set()
        attacher.close()
