"""Stacked devices under the default interface selection: a macvlan on a veth whose peer
is in another namespace. A packet the host sends through the macvlan passes TC egress on
the macvlan and again on its lower device, and one it receives passes ingress on both;
the flow key has no device, so with both attached every packet would count twice. Link
watching attaches the lower device only (ground truth: 10 datagrams each way)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.loading import FlowProgramConfig
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import TRAFFIC, Node, sh
from tests.privileged.collector.programs import attached

PEER_ADDRESS, HOST_ADDRESS = "10.57.0.2", "10.57.0.1"


@pytest.fixture
def node() -> Iterator[Node]:
    """A host namespace with ``low0`` (a veth to a peer namespace) and ``mv0``, a macvlan
    on it carrying the host's address."""
    built = Node(tag=f"fxb{os.getpid()}", ipv6=False)
    peer = f"{built.tag}x"
    with built.built(pods=0):
        sh("ip", "netns", "add", peer)
        try:
            built.hx("ip", "link", "add", "low0", "gso_max_segs", "1", "type", "veth",
                     "peer", "name", "eth0", "netns", peer)  # fmt: skip
            built.hx("ip", "link", "set", "low0", "up")
            built.hx("ip", "link", "add", "link", "low0", "name", "mv0", "type", "macvlan",
                     "mode", "bridge")  # fmt: skip
            built.hx("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", "mv0")
            built.hx("ip", "link", "set", "mv0", "up")
            px = ("ip", "netns", "exec", peer)
            sh(*px, "ip", "addr", "add", f"{PEER_ADDRESS}/24", "dev", "eth0")
            sh(*px, "ip", "link", "set", "eth0", "up")
            sh(*px, "ip", "link", "set", "lo", "up")
            yield built
        finally:
            subprocess.run(["ip", "netns", "del", peer], capture_output=True)


def echo(server: socket.socket, count: int) -> None:
    for _ in range(count):
        data, peer = server.recvfrom(2048)
        server.sendto(data, peer)


def test_a_macvlan_and_its_lower_device_count_each_packet_once(node: Node) -> None:
    metrics = CollectorMetrics.create(CollectorRegistry())
    with attached(node, FlowProgramConfig(max_flows=1024), ()) as kernel:
        attacher = kernel.attacher
        watcher = LinkWatcher(attacher, InterfaceSelection(), metrics)
        try:
            watcher.start()
            assert sorted(attacher.attached.values()) == ["low0"]
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            server.bind((HOST_ADDRESS, 7777))
            server.settimeout(5)
            replying = threading.Thread(target=echo, args=(server, 10))
            replying.start()
            subprocess.run(
                ["ip", "netns", "exec", f"{node.tag}x", sys.executable, TRAFFIC,
                 "udp-client", HOST_ADDRESS, "7777", "10", "100"],
                capture_output=True, check=True, timeout=30,
            )  # fmt: skip
            replying.join(10)
            server.close()
            (flow,) = [f for f in kernel.drainer.drain().flows if f.proto == 17]
        finally:
            watcher.close()
    assert (flow.packets, flow.rpackets) == (10, 10)
    assert (flow.bytes, flow.rbytes) == (1280, 1280)
