"""Every metric the collector serves is in its catalogues (`flowscope.collector.metrics`),
the ones scripts/reference.py turns into the README's metrics reference."""

from __future__ import annotations

import dataclasses
import inspect

from flowscope.collector import metrics
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.socket_tracing import SocketTracer
from prometheus_client import CollectorRegistry


def _names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def test_every_collector_metric_is_in_a_catalogue() -> None:
    """Regression: the socket tracer created its own metrics, so the reference omitted them."""
    catalogued = CollectorRegistry()
    for _, cls in inspect.getmembers(metrics, inspect.isclass):
        if dataclasses.is_dataclass(cls) and hasattr(cls, "create"):
            cls.create(catalogued)

    served = CollectorRegistry()
    metrics.CollectorMetrics.create(served)
    metrics.SocketSnapshotMetrics.create(served)
    SocketTracer("node-a", ContainerResolver(), served)  # the constructor loads no BPF

    assert _names(served) - _names(catalogued) == set()
