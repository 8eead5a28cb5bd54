"""The exporter's metrics catalogue: one family per question, labelled by sink."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(slots=True)
class ExporterMetrics:
    """Counters and gauges every sink feeds (label ``sink``; lag also ``stream``)."""

    exported: Counter
    failed: Counter
    retried: Counter
    dead_lettered: Counter
    partial_rejected: Counter
    already_stored: Counter
    bad_messages: Counter
    bad_responses: Counter
    resubscribed: Counter
    batch_seconds: Histogram
    lag: Gauge
    in_flight: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ExporterMetrics:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"flowscope_exporter_{name}", doc, ["sink"], registry=registry)

        return cls(
            exported=counter("records_exported", "records the sink's backend confirmed"),
            failed=counter("records_failed", "records the backend refused for good"),
            retried=counter("records_retried", "records sent again after a transient failure"),
            dead_lettered=counter(
                "records_dead_lettered", "records sent to flowscope.dlq.exporter"
            ),
            partial_rejected=counter(
                "records_partially_rejected", "records an OTLP partial_success rejected"
            ),
            already_stored=counter(
                "records_already_stored", "records Elasticsearch already held (409 on create)"
            ),
            bad_messages=counter(
                "bad_messages", "messages that could not be decoded (dead-lettered)"
            ),
            bad_responses=counter(
                "bad_responses", "success answers whose body could not be read (retried)"
            ),
            resubscribed=counter(
                "consumers_resubscribed", "times a consumer was gone and was subscribed again"
            ),
            batch_seconds=Histogram(
                "flowscope_exporter_batch_seconds",
                "seconds from handing a batch to the sink until it was confirmed",
                ["sink"],
                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
                registry=registry,
            ),
            lag=Gauge(
                "flowscope_exporter_consumer_lag",
                "messages the sink has not confirmed yet (pending + delivered unacked)",
                ["sink", "stream"],
                registry=registry,
            ),
            in_flight=Gauge(
                "flowscope_exporter_batches_in_flight",
                "export requests under way",
                ["sink"],
                registry=registry,
            ),
        )
