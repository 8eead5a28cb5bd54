"""Fixtures: a namespace "node" and the flow program attached to its host interfaces."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.privileged.collector.node import Node


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    built = Node().create(pods=2)
    try:
        yield built
    finally:
        built.destroy()


@dataclass
class Kernel:
    """The loaded flow program, attached to the node's pod veths, and its drainer."""

    program: object
    attacher: object
    drainer: object


@pytest.fixture(scope="module")
def kernel(node: Node) -> Iterator[Kernel]:
    from flowscope.collector.attaching import Attacher
    from flowscope.collector.draining import BatchReader, DirectionMemory, Drainer, TickClock
    from flowscope.collector.loading import FlowProgramConfig, load_flow_program

    with node.inside():
        program = load_flow_program(FlowProgramConfig(max_flows=4096))
        attacher = Attacher(
            program.ingress_fd,
            program.egress_fd,
            ingress_ip_fd=program.ingress_ip_fd,
            egress_ip_fd=program.egress_ip_fd,
        )
        for pod in node.pods:
            (index,) = attacher.ipr.link_lookup(ifname=pod.host_if)
            assert attacher.attach(index, pod.host_if)
        drainer = Drainer(
            BatchReader(program.flows.map_fd),
            TickClock(program.clock_pair),
            "test-node",
            3.0,
            DirectionMemory(1024),
        )
        try:
            yield Kernel(program, attacher, drainer)
        finally:
            attacher.detach_all()
            attacher.close()
            program.close()
