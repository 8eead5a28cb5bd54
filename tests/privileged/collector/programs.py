"""The flow program loaded and attached inside a test node, and taken away again.

One piece for every real-kernel test that needs the TC programs on some of a node's
interfaces: load with a given configuration, attach (each attach must succeed), hand
over the program, attacher and a drainer, then detach and close whatever the test did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tests.privileged.collector.node import Node


@dataclass
class Kernel:
    """The loaded flow program, its attacher, and a drainer of its flow map."""

    program: Any
    attacher: Any
    drainer: Any


@contextlib.contextmanager
def attached(
    node: Node,
    config: Any,
    ifnames: Sequence[str],
    *,
    chunk: int = 4096,
    memory: int = 16,
    observer: str = "n",
) -> Iterator[Kernel]:
    """Inside ``node``'s host namespace: load ``config``, attach to ``ifnames``.

    ``chunk`` is the drainer's batch size (small to exercise several batches), ``memory``
    its direction memory.
    """
    from flowscope.collector.attaching import Attacher
    from flowscope.collector.draining import BatchReader, DirectionMemory, Drainer, TickClock
    from flowscope.collector.loading import load_flow_program

    with node.inside():
        program = load_flow_program(config)
        attacher = Attacher(
            program.ingress_fd,
            program.egress_fd,
            ingress_ip_fd=program.ingress_ip_fd,
            egress_ip_fd=program.egress_ip_fd,
        )
        try:
            for ifname in ifnames:
                (index,) = attacher.ipr.link_lookup(ifname=ifname)
                assert attacher.attach(index, ifname), ifname
            drainer = Drainer(
                BatchReader(program.flows.map_fd, chunk),
                TickClock(program.clock_pair),
                observer,
                3.0,
                DirectionMemory(memory),
                cache=program.cache,
            )
            yield Kernel(program, attacher, drainer)
        finally:
            attacher.detach_all()
            attacher.close()
            program.close()
