"""A flow's last packet time never goes back before its first.

Each CPU reads the clock (jiffies) before it looks its flow up. A CPU that read it, then
found the entry another CPU created or updated a tick later, wrote its older tick as
the last: the record's end_ns came out before its start_ns. Here the entry's times are
set a long way ahead from user space, which a later packet's clock read then is, and
that packet must leave them as they are. Without the flow cache: the map path, which
several CPUs share (a cache slot is one CPU's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.privileged.collector.node import TRAFFIC, Node
from tests.privileged.collector.programs import attached

AHEAD = 1_000_000  # ticks: 1 000 to 4 000 s


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"ft{os.getpid()}", ipv6=False).built() as built:
        yield built


def spray(node: Node, sport: int) -> None:
    client, server = node.pods
    subprocess.run(
        ["ip", "netns", "exec", client.ns, sys.executable, TRAFFIC,
         "udp-spray", server.ip4, "9999", "1", str(sport)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def test_an_older_clock_read_does_not_move_the_last_tick_back(node: Node) -> None:
    from flowscope.collector.loading import FlowProgramConfig

    client, _ = node.pods
    config = FlowProgramConfig(max_flows=1024, cache_slots=0)
    with attached(node, config, [client.host_if]) as kernel:
        spray(node, 40100)
        moved = 0
        for name in (b"flows_a", b"flows_b"):
            table = kernel.program.bpf[name]
            for key, value in list(table.items()):
                value.first_tick = value.last_tick = value.last_tick + AHEAD
                table[key] = value
                moved += 1
        assert moved == 1
        spray(node, 40100)  # its clock read is now AHEAD ticks before the entry's times
        with node.inside():
            flows = kernel.drainer.drain().flows
    (flow,) = [f for f in flows if 40100 in (f.sport, f.dport)]
    assert flow.packets + flow.rpackets == 2
    assert flow.end_ns == flow.start_ns, (flow.start_ns, flow.end_ns)
