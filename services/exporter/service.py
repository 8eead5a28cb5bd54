"""The exporter service: ``flowscope exporter``.

Connects to NATS, makes sure the streams exist, then runs one :class:`SinkLane` per
configured sink as a root task. A sink whose backend is unreachable keeps retrying its
start-up (and reports not-ready on /readyz) without affecting the others. When stdout's
reader goes away the stdout lane ends, which stops the service with status 0.
"""

from __future__ import annotations

import gc
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
        # Configuration first: a bad OTEL_* variable or a TLS file that is not PEM is a
        # one-line exit 2, before any I/O (the sinks load their TLS files when built).
        otlp_target = resolve(settings.otlp, environ) if "otlp" in settings.sinks else None
        metrics = ExporterMetrics.create(rt.registry)
        sinks = build_sinks(settings, metrics, otlp_target)
        for sink in sinks:  # released even if stopped before its lane runs (closing twice is fine)
            rt.stack.push_async_callback(sink.close)
        connection = await messaging.connect_service(rt, settings.nats, "exporter")
        if connection is None:
            return  # SIGTERM while NATS was still unreachable
        nc, js, streams = connection
        for sink in sinks:
            lane = SinkLane(
                sink,
                js,
                nc,
                settings.batch,
                metrics,
                rt.stopping,
                _health(rt),
                streams,
                durable=settings.consumer.durable,
            )
            rt.spawn(lane.run(), f"sink-{sink.name}")

    return body


def _health(rt: Runtime) -> Callable[[str, bool, str], None]:
    def report(sink: str, ready: bool, detail: str) -> None:
        rt.health.set(f"sink-{sink}", ready, detail)

    return report


# Net new container objects (tracked by the garbage collector) before a young collection.
YOUNG_COLLECTION_AFTER = 50_000


def collect_less_often() -> None:
    """Let the records of the batches under way build up before a young collection.

    A decoded flow record is a dict holding a list (``flow.tcp.flags.tags``), so the
    collector tracks both; a message of 800 records adds 1,600 of them at once, and
    the default threshold (700 net new objects) starts a young collection one to three
    times per message. The records are still held (the batch being filled and up to
    ``max_in_flight`` being exported), so each collection finds them alive and moves
    them to an older generation, whose collections walk them again: in an exporter's
    life over 80,000 records (bench/exporter_consume.py, ~1.2 s of CPU), 25 of those
    and 285 young ones, ~0.2 s in all (start-up's included). The count is net —
    freeing a tracked object takes it back — so above what the batches under way hold
    at once (~10,000 objects with the default batch settings), the records are freed
    before any collection sees them: end to end, 3 alternating pairs, 58 / 68 / 82 →
    89 / 78 / 100 k records per CPU-second (docs/performance.md). Reference cycles,
    rare here, are still collected once 50,000 net new objects are reached.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, older, oldest)


def main(settings: Settings) -> int:
    """Run the exporter until signalled; returns the exit status."""
    collect_less_often()
    return runtime.run("exporter", settings.runtime, body_for(settings))
