"""The Kubernetes API slow during the first sync: the enricher is not ready, reports each
resource as not synced (``informer_synced`` 0), consumes no work — its backlog shows as
``consumer_pending`` — and, once the API answers, publishes that work with the
metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from flowscope.core import codec, subjects
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    Replica,
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    start_replica,
)
from tests.support.fake_kube import KINDS, FakeKube
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

WEB = "10.1.0.5"


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    kube = FakeKube()
    await kube.start()
    kube.add("pods", cluster.pod("web", ips=(WEB,), node="node-1"))
    yield kube
    kube.speak_again()
    kube.end_watches()
    await kube.stop()


async def test_not_synced_not_ready_and_work_waits_for_the_first_sync(
    nats_srv: NatsServer, clean_nc: NATS, fake: FakeKube, tmp_path: Path
) -> None:
    flows = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    local = start_replica(make_settings(nats_srv.url))  # makes the shared work consumers
    await local.ready()
    assert await local.stop() == 0
    for port in (40001, 40002, 40003):  # work waiting for the next replica
        await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("node-1"),
                          [raw_flow("node-1", WEB, "203.0.113.1", port, 443)])  # fmt: skip
    fake.go_silent()  # every LIST held unanswered
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    replica = start_replica(make_settings(nats_srv.url, **{"kubernetes.mode": "kubernetes",
                                                           "kubeconfig": kubeconfig}))  # fmt: skip
    try:
        await eventually(lambda: pending(replica) == 3, within=15, what="the backlog reported")
        assert not replica.rt.health.ready
        assert replica.rt.health.checks["kubernetes"][0] is False
        assert {k.resource: synced(replica, k.resource) for k in KINDS} == {
            k.resource: 0 for k in KINDS
        }
        fake.speak_again()
        await replica.ready()
        assert {synced(replica, k.resource) for k in KINDS} == {1}
        records = await flows.wait_for(lambda recs: len(recs) == 3)
        assert {r["source.k8s.pod.name"] for r in records} == {"web"}
        await eventually(lambda: pending(replica) == 0, within=15, what="the backlog consumed")
    finally:
        assert await replica.stop() == 0


def pending(replica: Replica) -> float | None:
    if not replica.runtime:
        return None
    labels = {"consumer": "flow"}
    return replica.rt.registry.get_sample_value("flowscope_enricher_consumer_pending", labels)


def synced(replica: Replica, resource: str) -> float | None:
    labels = {"resource": resource}
    return replica.rt.registry.get_sample_value("flowscope_enricher_informer_synced", labels)
