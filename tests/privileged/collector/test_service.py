"""The whole collector process in a namespace node, publishing to a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import CollectorProcess
from tests.privileged.collector.node import Node, finish, wait_listening
from tests.support import nats_server


@pytest.fixture(scope="module")
def nats_in_node(node: Node) -> Iterator[nats_server.NatsServer]:
    with node.inside():
        server = nats_server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def collector(node: Node, nats_in_node: nats_server.NatsServer) -> Iterator[CollectorProcess]:
    with node.inside():
        proc = CollectorProcess(nats_in_node.url, node.host).start()
    try:
        yield proc
    finally:
        proc.close()


class Flows:
    """Raw flow records arriving on flowscope.raw.flows.<node>, decoded with the codec."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.sub: Any = None

    async def handler(self, msg: Any) -> None:
        self.records.extend(codec.decode(codec.RAW_FLOW, msg.headers, msg.data))

    async def wait_for(self, match: Any, within: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [r for r in self.records if match(r)]
            if found:
                await asyncio.sleep(1.5)  # one more interval: nothing else may arrive
                return [r for r in self.records if match(r)]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no matching flow in {self.records[-5:]}")


@pytest.fixture
async def flows(node: Node, nats_in_node: nats_server.NatsServer) -> AsyncIterator[Flows]:
    import nats

    with node.inside():
        nc = await nats.connect(nats_in_node.url)
    got = Flows()
    got.sub = await nc.subscribe(subjects.raw_flows("testnode"), cb=got.handler)
    yield got
    await nc.close()


def filters(node: Node, ifname: str) -> list[str]:
    lines = []
    for hook in ("ingress", "egress"):
        out = node.hx("tc", "filter", "show", "dev", ifname, hook)
        lines += [f"{hook} {line}" for line in out.splitlines() if "flowscope" in line]
    return lines


async def test_tcp_flow_published_and_decodable(
    node: Node, collector: CollectorProcess, flows: Flows
) -> None:
    client, server = node.pods
    srv = node.start(server, "tcp-server", server.ip4, "9090", "5000")
    wait_listening(srv)
    sent = node.run(client, "tcp-client", server.ip4, "9090", "20000")
    finish(srv)
    got = await flows.wait_for(lambda r: r["proto"] == 6 and r["dport"] == 9090)
    assert len(got) == 1, got
    flow = got[0]
    assert (flow["src"], flow["sport"], flow["dst"]) == (client.ip4, sent["sport"], server.ip4)
    assert flow["observer"] == "testnode" and flow["initiator"] is True
    assert flow["bytes"] > 20000 and flow["rbytes"] > 5000
    assert flow["end_reason"] == "end_of_flow_detected"
    assert collector.metric("flowscope_collector_flows_drained_total") >= 1
    assert (
        collector.metric("flowscope_collector_interfaces_attached") == 2
    )  # veths, not br0, not lo


async def test_host_to_pod_through_bridge_counted_once(
    node: Node, collector: CollectorProcess, flows: Flows
) -> None:
    """The bridge is skipped: a pod↔host exchange is counted on the pod's veth only."""
    client = node.pods[0]
    assert node.run(client, "ping", "10.203.0.1", "4")["replies"] == 4
    got = await flows.wait_for(lambda r: r["proto"] == 1 and r["dst"] == "10.203.0.1")
    assert sum(r["packets"] for r in got) == 4 and sum(r["rpackets"] for r in got) == 4


async def test_new_veth_attached_within_a_second_and_counted(
    node: Node, collector: CollectorProcess, flows: Flows
) -> None:
    pod = node.add_pod()
    deadline = time.monotonic() + 1.0
    while not filters(node, pod.host_if) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert len(filters(node, pod.host_if)) == 2, "not attached within 1 s"
    other = node.pods[0]
    srv = node.start(other, "udp-echo", other.ip4, "6000", "3")
    wait_listening(srv)
    node.run(pod, "udp-client", other.ip4, "6000", "3", "100")
    finish(srv)
    got = await flows.wait_for(lambda r: r["proto"] == 17 and r["src"] == pod.ip4)
    assert sum(r["packets"] for r in got) == 3 and sum(r["rpackets"] for r in got) == 3


def test_sigkill_then_restart_leaves_no_stale_filters(
    node: Node, nats_in_node: nats_server.NatsServer
) -> None:
    with node.inside():
        first = CollectorProcess(nats_in_node.url, node.host).start()
    try:
        veths = [p.host_if for p in node.pods]
        assert all(len(filters(node, v)) == 2 for v in veths)
        first.kill()
        assert all(len(filters(node, v)) == 2 for v in veths)  # left behind by the crash
        with node.inside():
            second = CollectorProcess(nats_in_node.url, node.host).start()
        try:
            line = second.wait_log("leftover TC filters")
            assert line["leftover_filters_removed"] == 2 * len(veths)
            assert all(len(filters(node, v)) == 2 for v in veths)  # its own, once
            assert second.stop() == 0
            assert all(filters(node, v) == [] for v in veths), "SIGTERM must remove filters"
        finally:
            second.close()
    finally:
        first.close()
