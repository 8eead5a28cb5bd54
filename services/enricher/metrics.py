"""Every metric the enricher exports, in one catalogue (``flowscope_enricher_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flowscope.enricher.enriching import Tally
from prometheus_client import CollectorRegistry, Counter, Gauge

P = "flowscope_enricher"


@dataclass(slots=True)
class Metrics:
    """The enricher's Prometheus metrics."""

    records_in: Counter  # by kind: flow, socket, dns
    records_out: Counter  # by kind: flow, dns
    lookups: Counter  # by result: pod, service, node, host, external, unknown
    process_joins: Counter  # by result: hit, miss
    dns_joins: Counter  # by result: hit, miss
    dedup_dropped: Counter
    oversize_records: Counter  # by kind: flow, dns
    bad_records: Counter  # by kind
    bad_messages: Counter  # by reason
    dead_lettered: Counter
    redelivered: Counter  # by kind
    grouped_batches: Counter  # raw flow batches published together with others
    informer_synced: Gauge  # by resource
    informer_events: Counter  # by resource, type
    informer_objects: Gauge  # by resource
    informer_errors: Counter  # by resource
    odd_objects: Counter  # by resource
    relists: Counter  # by resource, reason
    staleness: Gauge
    consumer_pending: Gauge  # by consumer
    sockets: Gauge
    names: Gauge
    observers: Gauge
    identities: Gauge
    # add_flows' labelled counters, looked up once each: ``labels()`` takes a lock and
    # builds a key on every call (~2.5 µs), a dozen times per raw flow batch.
    _children: dict[tuple[str, str], Counter] = field(default_factory=dict, init=False)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{P}_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{P}_{name}", doc, labels, registry=registry)

        return cls(
            records_in=counter("records_in", "raw records received", ("kind",)),
            records_out=counter("records_out", "enriched records published", ("kind",)),
            lookups=counter("lookups", "address lookups by result kind", ("result",)),
            process_joins=counter("process_joins", "flow ends joined to a process", ("result",)),
            dns_joins=counter("dns_joins", "flow destinations joined to a DNS name", ("result",)),
            dedup_dropped=counter(
                "dedup_dropped",
                "cross-node duplicate flow and DNS reports dropped (kept on the other)",
            ),
            oversize_records=counter(
                "oversize_records",
                "enriched records dropped: larger than one NATS message (the rest published)",
                ("kind",),
            ),
            bad_records=counter("bad_records", "raw records failing the contract", ("kind",)),
            bad_messages=counter(
                "bad_messages", "raw messages that could not be decoded", ("reason",)
            ),
            dead_lettered=counter("dead_lettered", "messages sent to flowscope.dlq.enricher"),
            redelivered=counter(
                "redelivered",
                "raw messages handled again after another replica died or timed out",
                ("kind",),
            ),
            grouped_batches=counter(
                "grouped_batches",
                "raw flow batches whose output was published in one atomic batch with other "
                "batches due at the same time",
            ),
            informer_synced=gauge(
                "informer_synced", "1 once a resource's first full LIST is applied", ("resource",)
            ),
            informer_events=counter(
                "informer_events", "watch events applied", ("resource", "type")
            ),
            informer_objects=gauge("informer_objects", "objects held", ("resource",)),
            informer_errors=counter(
                "informer_errors", "LIST/WATCH failures (then retried with backoff)", ("resource",)
            ),
            odd_objects=counter(
                "odd_objects",
                "Kubernetes objects skipped for missing fields, or kept without odd fields",
                ("resource",),
            ),
            relists=counter("relists", "full re-LISTs", ("resource", "reason")),
            staleness=gauge(
                "kubernetes_staleness_seconds",
                "seconds since the Kubernetes API was last reachable (0 while it is)",
            ),
            consumer_pending=gauge(
                "consumer_pending", "raw messages not yet delivered (lag)", ("consumer",)
            ),
            sockets=gauge("sockets", "sockets in the process-join table"),
            names=gauge("dns_names", "(client, address) entries in the DNS name cache"),
            observers=gauge("observers", "nodes seen sending raw events"),
            identities=gauge(
                "identities",
                "address identities built and cached (pods, services, nodes, "
                "the external addresses flows named)",
            ),
        )

    def add_flows(self, tally: Tally) -> None:
        """Fold one batch's tally into the counters."""
        self._add("flow", tally)
        self._child("dns_joins", "hit").inc(tally.dns_hits)
        self._child("dns_joins", "miss").inc(tally.dns_misses)

    def add_dns(self, tally: Tally) -> None:
        """Fold one raw DNS batch's tally into the counters (its cross-node duplicates
        too: ``dedup_dropped`` counts flow and DNS reports alike; its client and server
        lookups and process joins count as a flow's do)."""
        self._add("dns", tally)

    def _add(self, kind: str, tally: Tally) -> None:
        """What a flow and a DNS batch's tallies have alike: records, duplicates dropped,
        address lookups and process joins."""
        child = self._child
        child("records_in", kind).inc(tally.records_in)
        child("records_out", kind).inc(tally.records_out)
        self.dedup_dropped.inc(tally.dedup_dropped)
        for result, n in tally.lookups.items():
            child("lookups", result).inc(n)
        child("process_joins", "hit").inc(tally.process_hits)
        child("process_joins", "miss").inc(tally.process_misses)

    def _child(self, metric: str, label: str) -> Counter:
        """``getattr(self, metric).labels(label)``, remembered (the series appears on
        first use, as with ``labels``)."""
        key = (metric, label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, metric).labels(label)
        return child
