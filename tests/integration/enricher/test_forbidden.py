"""The API answers but refuses a resource (403 Forbidden: RBAC lacks the rule): the
``kubernetes`` readiness detail names the resource and the refusal, not "unreachable"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import Replica, make_settings, start_replica
from tests.support.fake_kube import FakeKube
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.enricher import cluster


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    kube = FakeKube()
    await kube.start()
    kube.add("pods", cluster.pod("web", ips=("10.1.0.5",)))
    yield kube
    kube.end_watches()
    await kube.stop()


@pytest.fixture
async def replica(
    nats_srv: NatsServer, clean_nc: NATS, fake: FakeKube, tmp_path: Path
) -> AsyncIterator[Replica]:
    fake.forbid("endpointslices")  # from the start: RBAC lacks the rule
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    settings = make_settings(nats_srv.url, **{"kubernetes.mode": "kubernetes",
                                               "kubeconfig": kubeconfig})  # fmt: skip
    started = start_replica(settings)
    yield started
    await started.stop()


def check(replica: Replica) -> tuple[bool, str]:
    return replica.rt.health.checks.get("kubernetes", (False, ""))


def names_the_refusal(detail: str) -> bool:
    return "endpointslices" in detail and "403 Forbidden" in detail and "unreachable" not in detail


async def test_forbidden_resource_is_named_before_and_after_ready(
    replica: Replica, fake: FakeKube
) -> None:
    await eventually(lambda: bool(replica.runtime) and names_the_refusal(check(replica)[1]),
                     within=15, what="not ready, naming the refused resource")  # fmt: skip
    assert check(replica)[0] is False  # no first LIST of endpointslices: not ready
    assert "cannot list resource" in check(replica)[1]  # the API's own words
    fake.allow("endpointslices")
    await replica.ready()
    assert check(replica) == (True, "synced")
    fake.forbid("endpointslices")  # RBAC loses the rule while running
    await eventually(lambda: names_the_refusal(check(replica)[1]), within=15,
                     what="ready, naming the refused resource")  # fmt: skip
    ready, detail = check(replica)
    assert ready and "serving last known metadata" in detail
    fake.allow("endpointslices")
    await eventually(lambda: check(replica) == (True, "synced"), within=15, what="recovered")
