"""Fixtures: a namespace "node" (and a routed one with DNAT) and the flow program attached
to its host interfaces."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.privileged.collector.nat_node import NatNode, SnatNode
from tests.privileged.collector.node import Node
from tests.privileged.collector.programs import Kernel, attached


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with Node().built() as built:
        yield built


@pytest.fixture(scope="module")
def nat_node() -> Iterator[NatNode]:
    """A routed node with a kube-proxy-like DNAT rule (nat_node.py)."""
    with NatNode().built() as built:
        yield built


@pytest.fixture(scope="module")
def snat_node() -> Iterator[SnatNode]:
    """A routed node with one pod and an uplink to an "outside" namespace, masquerading
    the pod's connections leaving through it (nat_node.py)."""
    with SnatNode().built() as built:
        yield built


@pytest.fixture(scope="module")
def kernel(node: Node) -> Iterator[Kernel]:
    from flowscope.collector.loading import FlowProgramConfig

    ifnames = [pod.host_if for pod in node.pods]
    config = FlowProgramConfig(max_flows=4096)
    with attached(node, config, ifnames, memory=1024, observer="test-node") as loaded:
        yield loaded
