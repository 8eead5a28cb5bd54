"""Cross-node merge end to end (fake API over HTTP, real nats-server) when only one
end has a home, or both ends live on one node: a connection counted by a second node's
collector (an egress gateway, a node it is routed through) comes out once, from the
home node's report, its counters not doubled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from flowscope.core import codec, records, subjects
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    collect,
    make_settings,
    raw_flow,
    raw_socket,
    start_replica,
)
from tests.integration.enricher.test_kubernetes import AGENT, DB, WEB, Env, one, populate, send
from tests.support.fake_kube import FakeKube
from tests.support.nats_server import NatsServer

OUT = "203.0.113.1"


@pytest.fixture
async def env(nats_srv: NatsServer, clean_nc: NATS, tmp_path: Path) -> AsyncIterator[Env]:
    fake = FakeKube()
    await fake.start()
    populate(fake)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    settings = make_settings(nats_srv.url, **{"kubernetes.mode": "kubernetes",
                                               "kubeconfig": kubeconfig})  # fmt: skip
    replica = start_replica(settings)
    await replica.ready()
    flows = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    yield Env(fake, replica, clean_nc, flows)
    assert await replica.stop() == 0
    await fake.stop()


async def test_a_connection_seen_by_its_home_and_another_node_is_published_once(env: Env) -> None:
    # both nodes run collectors
    await send(env, "node-1", sockets=[
        raw_socket("node-1", "connect", WEB, 41000, OUT, 443, 100, "curl", "c-web")])  # fmt: skip
    await send(env, "node-2", sockets=[
        raw_socket("node-2", "accept", DB, 5432, "10.9.9.9", 1, 200, "postgres", "c-db")])  # fmt: skip
    # web (node-1) → outside, leaving through node-2: node-2 reports it first
    await send(env, "node-2", flows=[raw_flow("node-2", WEB, OUT, 41000, 443, initiator=True)])
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, OUT, 41000, 443, initiator=True)])
    # web → node-1's own address (its agent): both ends on node-1, node-2 reports it too
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, AGENT, 41001, 9100)])
    await send(env, "node-2", flows=[raw_flow("node-2", AGENT, WEB, 9100, 41001)])
    # a sentinel after them: once it is out, every report before it was handled
    await send(env, "node-2", flows=[raw_flow("node-2", DB, "198.51.100.9", 1, 1)])
    await one(env, **{"destination.address": "198.51.100.9"})
    outside = [r for r in env.flows.records if r["destination.address"] == OUT]
    assert len(outside) == 1, outside
    rec = records.validate_flow(outside[0])
    assert rec["observer.node.name"] == "node-1" and rec["source.process.pid"] == 100
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (1000, 5000)
    same_node = [r for r in env.flows.records if 41001 in (r["source.port"], r["destination.port"])]
    assert [r["observer.node.name"] for r in same_node] == ["node-1"]
    dropped = env.replica.rt.registry.get_sample_value("flowscope_enricher_dedup_dropped_total")
    assert dropped == 2
