"""An informer of pods over a fake API, for the tests of how it meets the API's silences,
odd answers and watch errors."""

from __future__ import annotations

import asyncio
from typing import Any

from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.watching import ApiHealth, Informer, WatchSettings, resources
from prometheus_client import CollectorRegistry

from tests.support.fake_kube import FakeKube
from tests.unit.enricher import cluster

PODS = next(r for r in resources(("app",)) if r.name == "pods")


class Setup:
    """An informer of pods over ``fake`` (through ``api``), running until :meth:`stop`.
    The API's staleness and the inventory's deletion grace go by one clock the test
    moves (``clock.now``, from 0). A WATCH asks for ``watch_timeout`` seconds: a healthy
    stream says something at least that often."""

    def __init__(
        self, fake: FakeKube, api: Any, watch_timeout: int = 1, deleted_grace: float = 60.0,
        backoff_max: float = 0.3,
    ) -> None:  # fmt: skip
        self.fake = fake
        self.clock = cluster.Clock(0.0)
        self.inventory = Inventory(deleted_grace=deleted_grace, clock=self.clock)
        self.registry = CollectorRegistry()
        self.health = ApiHealth(clock=self.clock)
        settings = WatchSettings(
            page_size=100, watch_timeout=watch_timeout, backoff_max=backoff_max
        )
        self.informer = Informer(api, PODS, self.inventory, Metrics.create(self.registry),
                                 self.health, settings)  # fmt: skip
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self.informer.run(self.stopping))

    def metric(self, name: str, **labels: str) -> float:
        sample = f"flowscope_enricher_{name}_total"
        return self.registry.get_sample_value(sample, {"resource": "pods", **labels}) or 0.0

    def name_of(self, ip: str) -> str | None:
        return self.inventory.resolve(ip).source.get("source.k8s.pod.name")

    def lists(self) -> int:
        return sum(1 for r, q in self.fake.requests if r == "pods" and "watch" not in q)

    def watches(self) -> list[dict[str, str]]:
        return [q for r, q in self.fake.requests if r == "pods" and q.get("watch") == "true"]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 5)  # also raises what ended the informer
