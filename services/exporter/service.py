"""The exporter service: ``flowscope exporter``.

Connects to NATS, makes sure the streams exist, then runs one :class:`SinkLane` per
configured sink as a root task. A sink whose backend is unreachable keeps retrying its
start-up (and reports not-ready on /readyz) without affecting the others. When stdout's
reader goes away the stdout lane ends, which stops the service with status 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from flowscope.core import messaging, runtime
from flowscope.core.runtime import Runtime
from flowscope.exporter.consuming import SinkLane
from flowscope.exporter.ecs import EcsMapper
from flowscope.exporter.elasticsearch import ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import OtlpSink
from flowscope.exporter.otlp_config import OtlpTarget, resolve
from flowscope.exporter.otlp_encoding import LogsEncoder, resource_attributes
from flowscope.exporter.settings import Settings
from flowscope.exporter.sink import Sink
from flowscope.exporter.stdout import StdoutSink


def build_sinks(
    settings: Settings, metrics: ExporterMetrics, otlp_target: OtlpTarget | None
) -> list[Sink]:
    """One sink object per configured name, in the configured order."""
    backoff = (settings.batch.retry_initial, settings.batch.retry_max)
    sinks: list[Sink] = []
    for name in settings.sinks:
        if name == "stdout":
            sinks.append(StdoutSink())
        elif name == "otlp" and otlp_target is not None:
            encoder = LogsEncoder(resource_attributes(settings.cluster_name))
            sinks.append(OtlpSink(otlp_target, encoder, metrics, backoff))
        elif name == "elasticsearch":
            mapper = EcsMapper(settings.cluster_name)
            sinks.append(ElasticsearchSink(settings.elasticsearch, mapper, metrics, backoff))
    return sinks


def body_for(settings: Settings, env: Mapping[str, str] | None = None) -> runtime.Body:
    """The service body (separate from ``main`` so tests can run it in-process)."""
    environ = os.environ if env is None else env

    async def body(rt: Runtime) -> None:
        # Configuration first: a bad OTEL_* variable is a one-line exit 2, before any I/O.
        otlp_target = resolve(settings.otlp, environ) if "otlp" in settings.sinks else None
        metrics = ExporterMetrics.create(rt.registry)
        nc = await messaging.connect(settings.nats, "exporter", rt.registry)
        rt.stack.push_async_callback(messaging.close, nc)
        js = nc.jetstream()
        await messaging.ensure_streams(js, settings.nats)
        for sink in build_sinks(settings, metrics, otlp_target):
            lane = SinkLane(sink, js, nc, settings.batch, metrics, rt.stopping, _health(rt))
            rt.spawn(lane.run(), f"sink-{sink.name}")

    return body


def _health(rt: Runtime) -> Callable[[str, bool, str], None]:
    def report(sink: str, ready: bool, detail: str) -> None:
        rt.health.set(f"sink-{sink}", ready, detail)

    return report


def main(settings: Settings) -> int:
    """Run the exporter until signalled; returns the exit status."""
    return runtime.run("exporter", settings.runtime, body_for(settings))
