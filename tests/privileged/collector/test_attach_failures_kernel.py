"""Attaching where the interface cannot take flowscope's filters: a legacy ``ingress``
qdisc in clsact's place, or another filter holding flowscope's priority on one hook.
Both filters or none: nothing of flowscope's may stay behind, tracked or not, and the
outcome is an error link watching counts. A tiny classifier (returns TC_ACT_OK) stands
in for the flow program: this is about filters."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flowscope.collector.attaching import FILTER_PRIO, Attacher, AttachError
from flowscope.collector.link_watching import InterfaceSelection, LinkEvent, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"fxb{os.getpid()}", ipv6=False).built(pods=0) as built:
        built.hx("ip", "link", "add", "fxba", "type", "veth", "peer", "name", "fxbb")
        yield built


@pytest.fixture
def attacher(node: Node) -> Iterator[Attacher]:
    from bcc import BPF

    with node.inside():
        bpf = BPF(text=b"int keep(struct __sk_buff *skb) { return 0; }")
        fd = bpf.load_func(b"keep", BPF.SCHED_CLS).fd
        attacher = Attacher(fd, fd)
    try:
        yield attacher
    finally:
        attacher.close()
        bpf.cleanup()


def attach_through_watcher(attacher: Attacher, ifname: str) -> CollectorMetrics:
    metrics = CollectorMetrics.create(CollectorRegistry())
    (index,) = attacher.ipr.link_lookup(ifname=ifname)
    LinkWatcher(attacher, InterfaceSelection(), metrics).apply(
        LinkEvent(True, index, ifname, "veth")
    )
    return metrics


def test_a_legacy_ingress_qdisc_is_left_alone_and_nothing_attached(
    node: Node, attacher: Attacher
) -> None:
    node.hx("tc", "qdisc", "add", "dev", "fxba", "ingress")
    (index,) = attacher.ipr.link_lookup(ifname="fxba")
    with pytest.raises(AttachError, match="'ingress' qdisc"):
        attacher.attach(index, "fxba")
    metrics = attach_through_watcher(attacher, "fxba")
    assert metrics.attach_errors._value.get() == 1
    assert metrics.interfaces_attached._value.get() == 0
    assert attacher.attached == {} and node.flowscope_filters("fxba") == []
    assert attacher.detach_all() == 0 and node.flowscope_filters("fxba") == []
    assert "qdisc ingress ffff:" in node.hx("tc", "qdisc", "show", "dev", "fxba")


def test_a_failed_egress_filter_takes_the_ingress_one_back(node: Node, attacher: Attacher) -> None:
    node.hx("tc", "qdisc", "add", "dev", "fxba", "clsact")
    node.hx("tc", "filter", "add", "dev", "fxba", "egress", "prio", str(FILTER_PRIO),
            "protocol", "ip", "u32", "match", "u32", "0", "0")  # fmt: skip
    (index,) = attacher.ipr.link_lookup(ifname="fxba")
    with pytest.raises(AttachError, match="fxba"):
        attacher.attach(index, "fxba")
    assert attacher.attached == {} and node.flowscope_filters("fxba") == []
    metrics = attach_through_watcher(attacher, "fxba")
    assert metrics.attach_errors._value.get() == 1
    assert node.flowscope_filters("fxba") == []
    # the other interface is attached as usual, and detached whole
    (other,) = attacher.ipr.link_lookup(ifname="fxbb")
    assert attacher.attach(other, "fxbb") and len(node.flowscope_filters("fxbb")) == 2
    assert attacher.detach_all() == 1
    assert node.flowscope_filters("fxba") == [] and node.flowscope_filters("fxbb") == []
    assert "u32" in node.hx("tc", "filter", "show", "dev", "fxba", "egress")
