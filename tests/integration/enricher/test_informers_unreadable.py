"""A watch event whose object no longer converts: the version held before is outdated and
its replacement unreadable, so the object counts as deleted (with the grace), as a LIST
that skips it would have it — it is not served as if nothing had changed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.watching import ApiHealth, Informer, WatchSettings, resources
from prometheus_client import CollectorRegistry

from tests.integration.enricher.conftest import kube_api
from tests.support.fake_kube import FakeKube
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

GRACE = 60.0


class Setup:
    def __init__(self, fake: FakeKube, api: Any, resource: str) -> None:
        self.fake = fake
        self.clock = cluster.Clock()
        self.inventory = Inventory(deleted_grace=GRACE, clock=self.clock)
        self.registry = CollectorRegistry()
        watched = next(r for r in resources(("app",)) if r.name == resource)
        self.resource = resource
        self.informer = Informer(api, watched, self.inventory, Metrics.create(self.registry),
                                 ApiHealth(), WatchSettings(100, 30, 0.3))  # fmt: skip
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self.informer.run(self.stopping))

    def metric(self, name: str, **labels: str) -> float:
        sample = f"flowscope_enricher_{name}_total"
        return self.registry.get_sample_value(sample, {"resource": self.resource, **labels}) or 0.0

    async def events(self, kind: str, n: int) -> None:
        await eventually(lambda: self.metric("informer_events", type=kind) == n, within=10)

    def kind_of(self, ip: str) -> str:
        return self.inventory.resolve(ip).kind

    def sweep_after_grace(self) -> None:
        """Move the clock past the deletion grace and sweep the inventory."""
        self.clock.now += GRACE + 1
        self.inventory.sweep()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Any]]:
    kube = FakeKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api


@contextlib.asynccontextmanager
async def watching(fake: tuple[FakeKube, Any], resource: str) -> AsyncIterator[Setup]:
    """An informer of ``resource`` past its first LIST, watching; stopped afterwards."""
    kube, api = fake
    setup = Setup(kube, api, resource)
    try:
        await eventually(lambda: kube.watch_count(resource) == 1, within=10)
        yield setup
    finally:
        await setup.stop()


def unreadable_pod(name: str, ip: str) -> dict[str, Any]:
    pod = cluster.pod(name, ips=(ip,))
    pod["spec"] = "not an object"
    return pod


@contextlib.asynccontextmanager
async def p1_made_unreadable(fake: tuple[FakeKube, Any]) -> AsyncIterator[Setup]:
    """Pod p1 at 10.1.0.1, watched, then MODIFIED into a version that does not convert
    (the informer has counted that event)."""
    kube, _ = fake
    kube.add("pods", cluster.pod("p1", ips=("10.1.0.1",)))
    async with watching(fake, "pods") as setup:
        kube.modify("pods", unreadable_pod("p1", "10.1.0.1"))
        await setup.events("MODIFIED", 1)
        yield setup


async def test_unreadable_modified_pod_counts_as_deleted_with_the_grace(
    fake: tuple[FakeKube, Any],
) -> None:
    kube, _ = fake
    async with p1_made_unreadable(fake) as setup:
        assert setup.metric("odd_objects") == 1
        # Deleted: a live pod given the address takes it at once ...
        kube.add("pods", cluster.pod("p2", ips=("10.1.0.1",)))
        await setup.events("ADDED", 1)
        assert setup.inventory.resolve("10.1.0.1").meta["k8s.pod.name"] == "p2"
        # ... and the unreadable one is forgotten after the grace.
        setup.sweep_after_grace()
        assert ("shop", "p1") not in setup.inventory.stores["pods"]


async def test_unreadable_modified_pod_resolves_only_for_the_grace(
    fake: tuple[FakeKube, Any],
) -> None:
    kube, _ = fake
    async with p1_made_unreadable(fake) as setup:
        setup.sweep_after_grace()
        assert setup.kind_of("10.1.0.1") == "external"
        # A readable version later brings it back.
        kube.modify("pods", cluster.pod("p1", ips=("10.1.0.1",)))
        await setup.events("MODIFIED", 2)
        assert setup.inventory.resolve("10.1.0.1").meta["k8s.pod.name"] == "p1"


async def test_unreadable_deleted_event_still_deletes(fake: tuple[FakeKube, Any]) -> None:
    kube, _ = fake
    kube.add("services", cluster.service("db", cluster_ips=("10.96.0.10",)))
    async with watching(fake, "services") as setup:
        odd = cluster.service("db", cluster_ips=("10.96.0.10",))
        odd["spec"] = ["not", "an", "object"]
        kube.objects["services"][("shop", "db")] = odd  # its last state, as the event carries
        kube.delete("services", "shop", "db")
        await setup.events("DELETED", 1)
        assert setup.kind_of("10.96.0.10") == "service"  # within the grace
        setup.sweep_after_grace()
        assert setup.kind_of("10.96.0.10") == "external"
        assert setup.inventory.count("services") == 0


async def test_event_naming_no_object_changes_nothing_but_is_counted(
    fake: tuple[FakeKube, Any],
) -> None:
    kube, _ = fake
    kube.add("pods", cluster.pod("p1", ips=("10.1.0.1",)))
    async with watching(fake, "pods") as setup:
        nameless = unreadable_pod("p1", "10.1.0.1")
        nameless["metadata"]["name"] = {"odd": True}
        nameless["metadata"]["resourceVersion"] = str(kube.version + 1)
        for watcher in kube.watchers:
            watcher.queue.put_nowait(orjson.dumps({"type": "MODIFIED", "object": nameless}) + b"\n")
        await setup.events("MODIFIED", 1)
        assert setup.metric("odd_objects") == 1
        assert setup.inventory.stores["pods"][("shop", "p1")].deleted_at == 0.0
        assert setup.inventory.resolve("10.1.0.1").meta["k8s.pod.name"] == "p1"
