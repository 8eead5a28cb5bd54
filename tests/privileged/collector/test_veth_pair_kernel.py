"""A veth pair with both ends in the collector's namespace (Cilium's cilium_host and
cilium_net are one): a datagram the host sends out of one end passes TC egress there
(host-originated) and TC ingress on the other end, and the flow key has no device, so with
both ends attached every packet would count twice. Link watching attaches one end only,
the one with the higher index (``va``: the kernel registers the peer first), and leaves a
pod's veth (its peer in another namespace) attached as before. Ground truth: 10 datagrams
the host sends out of each end, and 10 a pod sends that the host forwards out of ``va``
(counted on the pod's veth, not again at ``vb``)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.loading import FlowProgramConfig
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node
from tests.privileged.collector.programs import attached


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"fx29v{os.getpid()}", ipv6=False).built(pods=1) as built:
        yield built


def add_pair(node: Node) -> None:
    """The pair ``va``/``vb``, forwarding, a route out of each end to a made-up neighbour
    (what comes out of the pair is dropped: it would be routed into it again)."""
    node.hx("ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    node.hx("ip", "addr", "add", "10.250.0.1/32", "dev", "va")
    for end, net in (("va", "10.251.0"), ("vb", "10.252.0")):
        node.hx("ip", "link", "set", end, "up")
        node.hx("ip", "route", "add", f"{net}.0/24", "dev", end)
        node.hx("ip", "neigh", "add", f"{net}.9", "lladdr", "02:00:00:00:00:09", "dev", end)
        node.hx("ip", "rule", "add", "iif", end, "blackhole")
    node.hx("sysctl", "-q", "net.ipv4.ip_forward=1")


def test_a_veth_pair_inside_the_namespace_counts_each_packet_once(node: Node) -> None:
    metrics = CollectorMetrics.create(CollectorRegistry())
    with attached(node, FlowProgramConfig(max_flows=1024), ()) as kernel:
        attacher = kernel.attacher
        watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
        try:
            watcher.start()
            add_pair(node)  # after the listing: seen through link events, as they come
            watcher._catch_up(*watcher._pending_events())
            ends = {name: attacher.ipr.link_lookup(ifname=name)[0] for name in ("va", "vb")}
            assert ends["va"] > ends["vb"]
            assert sorted(attacher.attached.values()) == ["va", "veth10"]
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(10):
                sender.sendto(b"x" * 100, ("10.251.0.9", 9991))  # out of va
                sender.sendto(b"x" * 100, ("10.252.0.9", 9992))  # out of vb
            sender.close()
            (pod,) = node.pods
            node.run(pod, "udp-spray", "10.251.0.9", "9993", "10")  # forwarded out of va
            time.sleep(0.2)
            flows = kernel.drainer.drain().flows
        finally:
            watcher.close()
    counted = {f.dport: (f.packets, f.bytes) for f in flows if f.proto == 17}
    forwarded = {port: (1, 60) for port in range(9993, 10003)}
    assert counted == {9991: (10, 1280), 9992: (10, 1280), **forwarded}
