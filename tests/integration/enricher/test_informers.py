"""Informers against the fake API over real HTTP, through the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from flowscope.core import config
from flowscope.enricher import service
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.settings import Settings
from flowscope.enricher.watching import ApiHealth, Informer, WatchSettings, resources
from prometheus_client import CollectorRegistry

from tests.support.fake_kube import FakeKube
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

PODS = next(r for r in resources(("app",)) if r.name == "pods")


class Harness:
    def __init__(self, fake: FakeKube, api: Any) -> None:
        self.fake = fake
        self.api = api
        self.inventory = Inventory(deleted_grace=0.5)
        self.registry = CollectorRegistry()
        self.metrics = Metrics.create(self.registry)
        self.health = ApiHealth()
        self.stopping = asyncio.Event()
        self.informer = Informer(self.api, PODS, self.inventory, self.metrics, self.health,
                                 WatchSettings(page_size=2, watch_timeout=30, backoff_max=0.3))  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.informer.run(self.stopping))

    def name_of(self, ip: str) -> str | None:
        return self.inventory.resolve(ip).source.get("source.k8s.pod.name")

    def metric(self, name: str, **labels: str) -> float:
        for sample in (f"flowscope_enricher_{name}_total", f"flowscope_enricher_{name}"):
            value = self.registry.get_sample_value(sample, labels)
            if value is not None:
                return value
        return 0.0

    def watches(self) -> list[dict[str, str]]:
        return [q for r, q in self.fake.requests if r == "pods" and q.get("watch") == "true"]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    fake = FakeKube()
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    settings = config.load(Settings, {"kubeconfig": str(kubeconfig)}, env={})
    api = await service.kube_client(settings)
    h = Harness(fake, api)
    yield h
    h.stopping.set()
    fake.end_watches()
    if h.task is not None:
        await asyncio.wait_for(h.task, 5)
    await api.close()
    await fake.stop()


def add_pods(fake: FakeKube, n: int) -> None:
    for i in range(n):
        fake.add("pods", cluster.pod(f"p{i}", ips=(f"10.1.0.{i + 1}",)))


async def test_paginated_list_then_watch_from_its_resource_version(harness: Harness) -> None:
    add_pods(harness.fake, 5)
    version = harness.fake.version
    harness.start()
    await asyncio.wait_for(harness.informer.synced.wait(), 10)
    assert [harness.name_of(f"10.1.0.{i}") for i in range(1, 6)] == [f"p{i}" for i in range(5)]
    lists = [q for r, q in harness.fake.requests if r == "pods" and "watch" not in q]
    assert len(lists) == 3 and all(q["limit"] == "2" for q in lists)  # 5 pods, pages of 2
    assert "continue" not in lists[0] and all("continue" in q for q in lists[1:])
    await eventually(lambda: bool(harness.watches()), within=10)
    watch = harness.watches()[0]
    assert watch["resourceVersion"] == str(version)
    assert watch["allowWatchBookmarks"] == "true"
    assert harness.inventory.ready is True  # only pods expected here


async def test_watch_events_applied(harness: Harness) -> None:
    add_pods(harness.fake, 1)
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    harness.fake.add("pods", cluster.pod("new", ips=("10.1.0.50",)))
    await eventually(lambda: harness.name_of("10.1.0.50") == "new", within=10)
    harness.fake.modify("pods", cluster.pod("new", ips=("10.1.0.51",)))
    await eventually(lambda: harness.name_of("10.1.0.51") == "new", within=10)
    assert harness.name_of("10.1.0.50") is None
    harness.fake.delete("pods", "shop", "new")
    await eventually(
        lambda: harness.metric("informer_events", resource="pods", type="DELETED") == 1, within=10
    )
    assert harness.name_of("10.1.0.51") == "new"  # within the deleted grace period
    await asyncio.sleep(0.6)
    harness.inventory.sweep()
    assert harness.name_of("10.1.0.51") is None


async def test_bookmark_advances_resume_point(harness: Harness) -> None:
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    harness.fake.add("services", cluster.service("unrelated"))  # moves the global version
    harness.fake.bookmark()
    await eventually(
        lambda: harness.metric("informer_events", resource="pods", type="BOOKMARK") == 1, within=10
    )
    harness.fake.end_watches()
    await eventually(lambda: len(harness.watches()) == 2, within=10)
    assert harness.watches()[1]["resourceVersion"] == str(harness.fake.version)


async def test_stream_broken_mid_line_resumes_without_relist(harness: Harness) -> None:
    add_pods(harness.fake, 1)
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    harness.fake.add("pods", cluster.pod("before", ips=("10.1.0.60",)))
    await eventually(lambda: harness.name_of("10.1.0.60") == "before", within=10)
    harness.fake.break_watches()
    await eventually(lambda: len(harness.watches()) == 2, within=10)
    harness.fake.add("pods", cluster.pod("after", ips=("10.1.0.61",)))
    await eventually(lambda: harness.name_of("10.1.0.61") == "after", within=10)
    lists = [q for r, q in harness.fake.requests if r == "pods" and "watch" not in q]
    assert len(lists) == 1  # resumed from its resourceVersion: no re-LIST
    assert harness.watches()[1]["resourceVersion"] == str(harness.fake.version - 1)


async def test_410_expired_relists_and_catches_up_on_missed_deletes(harness: Harness) -> None:
    add_pods(harness.fake, 2)
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    # While the client is away: a pod is deleted and history is compacted.
    harness.fake.break_watches()
    harness.fake.delete("pods", "shop", "p0")
    harness.fake.add("pods", cluster.pod("fresh", ips=("10.1.0.70",)))
    harness.fake.compact()
    await eventually(
        lambda: harness.metric("relists", resource="pods", reason="expired") >= 1, within=10
    )
    await eventually(lambda: harness.name_of("10.1.0.70") == "fresh", within=10)
    await asyncio.sleep(0.6)
    harness.inventory.sweep()
    assert harness.name_of("10.1.0.1") is None  # p0: gone after the relist + grace
    assert harness.name_of("10.1.0.2") == "p1"


async def test_expired_continue_token_restarts_the_list(harness: Harness) -> None:
    add_pods(harness.fake, 5)
    harness.fake.expire_after_first_page = True
    harness.start()
    await asyncio.wait_for(harness.informer.synced.wait(), 10)
    assert harness.metric("relists", resource="pods", reason="expired") == 1
    assert harness.inventory.count("pods") == 5


async def test_api_unreachable_keeps_metadata_reports_staleness_and_recovers(
    harness: Harness,
) -> None:
    add_pods(harness.fake, 1)
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    await harness.fake.stop()
    await eventually(lambda: harness.health.staleness() > 0, within=10)
    assert harness.name_of("10.1.0.1") == "p0"  # last known metadata still served
    assert harness.metric("informer_errors", resource="pods") >= 1
    await harness.fake.start()  # same port
    harness.fake.add("pods", cluster.pod("back", ips=("10.1.0.80",)))
    await eventually(lambda: harness.name_of("10.1.0.80") == "back", within=10)
    assert harness.health.staleness() == 0


async def test_odd_objects_skipped_and_counted(harness: Harness) -> None:
    add_pods(harness.fake, 1)
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    odd = cluster.pod("odd")
    odd["spec"] = "not-a-spec"
    harness.fake.add("pods", odd)
    harness.fake.add("pods", cluster.pod("fine", ips=("10.1.0.90",)))
    await eventually(lambda: harness.name_of("10.1.0.90") == "fine", within=10)
    assert harness.metric("odd_objects", resource="pods") == 1


async def test_odd_addresses_skipped_and_counted_and_the_rest_canonical(
    harness: Harness,
) -> None:
    harness.start()
    await eventually(lambda: harness.fake.watch_count("pods") == 1, within=10)
    harness.fake.add("pods", cluster.pod("dual", ips=("10.1.0.91", "FD00:10:0:0::91", "10.1.0.")))
    await eventually(lambda: harness.name_of("10.1.0.91") == "dual", within=10)
    assert harness.name_of("fd00:10::91") == "dual"  # the flows' spelling
    assert harness.metric("odd_objects", resource="pods") == 1
    assert harness.inventory.stores["pods"][("shop", "dual")].ips == ("10.1.0.91", "fd00:10::91")


async def test_streams_ending_at_once_back_off_instead_of_spinning(harness: Harness) -> None:
    harness.fake.end_watches_at_once = True
    harness.start()
    await asyncio.wait_for(harness.informer.synced.wait(), 10)
    harness.fake.add("pods", cluster.pod("meanwhile", ips=("10.1.0.40",)))
    await eventually(
        lambda: harness.name_of("10.1.0.40") == "meanwhile", within=10
    )  # still applied
    before = len(harness.watches())
    await asyncio.sleep(1.5)
    assert len(harness.watches()) - before <= 8  # backoff 0.2 s doubling to 0.3 s: ~5
