"""Settings of the enricher (flags, FLOWSCOPE_* variables, YAML): see docs/enricher.md."""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.core.config import at_least_one, not_negative, positive, section, setting
from flowscope.core.messaging import NatsSettings, durable_base
from flowscope.core.runtime import RuntimeSettings

# The work kinds' durable consumers, <consumer.durable>-<suffix> (consuming.WORK's).
DURABLE_SUFFIXES = ("flows", "dns", "sockets")


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """Where Kubernetes metadata comes from (``--kubernetes-*``)."""

    mode: str = setting(
        "auto",
        "auto: Kubernetes when running in a cluster or a kubeconfig is found, else local "
        "mode (local addresses become `host`); kubernetes: require it; local: never use it",
        choices=("auto", "kubernetes", "local"),
    )
    label_keys: tuple[str, ...] = setting(
        ("app", "app.kubernetes.io/name", "app.kubernetes.io/instance", "version"),
        "pod label keys copied to *.k8s.pod.labels.<key> (comma-separated allow-list; "
        "an allow-list keeps records small and label values out of places they weren't meant for)",
    )
    deleted_grace: float = setting(
        60.0,
        "seconds a deleted pod/service/node stays resolvable, so the last flows of a pod "
        "that just ended still get its name (flows are reported up to an active timeout late)",
        parse=not_negative,
    )
    resync_backoff_max: float = setting(
        30.0,
        "upper bound in seconds of the backoff between reconnections to the Kubernetes API",
        parse=positive,
    )
    watch_timeout: int = setting(
        300,
        "seconds a WATCH request asks the API server to keep the stream open before it "
        "is renewed from the last resourceVersion (the API server's own default is 30-60 min)",
        parse=at_least_one,
    )
    probe_interval: float = setting(
        10.0,
        "seconds between two GET /version asking whether the API still answers (also "
        "the wait for the answer): an API gone silent shows as stale that soon instead "
        "of after a quiet WATCH's timeout, and its watches are renewed when it answers "
        "again; 0: never ask",
        parse=not_negative,
    )
    page_size: int = setting(
        500,
        "objects per LIST page (`limit`); bounds the memory of one response",
        parse=at_least_one,
    )


@dataclass(frozen=True, slots=True)
class JoinSettings:
    """Process, DNS and cross-node joins (``--join-*``)."""

    merge_window: float = setting(
        1.5,
        "seconds a raw flow batch is held before enrichment so that socket events from "
        "the other node of a cross-node connection arrive first",
        parse=not_negative,
    )
    socket_grace: float = setting(
        30.0,
        "seconds a socket stays joinable after its close event (its last flow interval "
        "is reported after the close)",
        parse=not_negative,
    )
    socket_max_entries: int = setting(
        200_000, "sockets remembered per replica (LRU bound; about 200 B each)", parse=at_least_one
    )
    dns_ttl_min: float = setting(
        60.0,
        "seconds: floor of a DNS answer's lifetime in the name cache (clients keep using "
        "addresses past tiny TTLs); a hit extends an entry to at least this",
        parse=not_negative,
    )
    dns_ttl_max: float = setting(
        3600.0, "seconds: cap of a DNS answer's lifetime in the name cache", parse=positive
    )
    dns_max_entries: int = setting(
        200_000,
        "(client, address) → name entries kept (second-chance bound); as many CNAME "
        "aliases (a chain answered across messages) again at most",
        parse=at_least_one,
    )
    state_lookback: float = setting(
        300.0,
        "seconds of socket and DNS events a starting replica replays from the raw stream "
        "to rebuild its join tables",
        parse=not_negative,
    )
    observer_ttl: float = setting(
        300.0,
        "seconds, in the events' own times, a node counts as running a collector around "
        "each of its raw events (cross-node dedup only drops a report while every known "
        "home node of its ends has a collector)",
        parse=positive,
    )


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """The shared JetStream work consumers (``--consumer-*``)."""

    durable: str = setting(
        "enricher",
        "durable consumer name shared by all replicas (suffixed -flows, -dns and -sockets)",
        parse=durable_base(DURABLE_SUFFIXES),
    )
    batch: int = setting(64, "raw messages fetched per pull request", parse=at_least_one)
    ack_wait: float = setting(
        30.0,
        "seconds before an unacknowledged raw message is redelivered (to another replica "
        "when this one died); must exceed the merge window plus processing time",
        parse=positive,
    )
    max_ack_pending: int = setting(
        512, "raw messages in flight across all replicas (bounds memory)", parse=at_least_one
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the enricher can be told."""

    runtime: RuntimeSettings = section(RuntimeSettings, "logs, HTTP endpoint, drain", flat=True)
    nats: NatsSettings = section(NatsSettings, "NATS connection and streams")
    kubeconfig: str = setting(
        "",
        "kubeconfig file (else KUBECONFIG, else the in-cluster configuration, else "
        "~/.kube/config; none found: local mode in auto mode, an error in kubernetes mode)",
    )
    kubernetes: KubernetesSettings = section(KubernetesSettings, "Kubernetes metadata")
    join: JoinSettings = section(JoinSettings, "process, DNS and cross-node joins")
    consumer: ConsumerSettings = section(ConsumerSettings, "shared raw-flow work consumer")
    native_core: bool = setting(
        True,
        "enrich flows with the compiled core (services/enricher/flowcore.c) when it was "
        "built; false, or a build without it, uses the Python path (same output, slower)",
    )
