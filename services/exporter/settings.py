"""Settings of the exporter (flags, FLOWSCOPE_* variables, YAML): see docs/exporter.md.

Parsers here reject a bad value at start-up (unknown sink, malformed URL, unreadable
file) so the CLI stops with one line naming the setting and exit status 2. The OTLP
section falls back to the standard ``OTEL_EXPORTER_OTLP_*`` variables; that merge
happens in :mod:`flowscope.exporter.otlp_config`, because it needs the environment.
Checks that need several settings at once (TLS files loaded together into a context)
happen when the sink's configuration is built, still before any I/O.

Error messages never repeat a secret: a malformed header item is named by its
position, and a URL is shown without its ``user:password@`` part. Credentials in a URL
are refused, not used: a URL is logged, and may come from a flag, which ps shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from flowscope.core.config import (
    parse_secret,
    positive,
    readable_file,
    section,
    setting,
    without_userinfo,
)
from flowscope.core.messaging import NatsSettings, durable_base
from flowscope.core.runtime import RuntimeSettings

SINK_NAMES = ("stdout", "otlp", "elasticsearch")
HEADER_NAME = re.compile(r"[0-9a-z_.-]+")  # lower case: keys are lowered when parsed
HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
DEFAULT_DURABLE = "flowscope-exporter"  # the name every release before the setting used


def parse_sinks(value: tuple[str, ...]) -> tuple[str, ...]:
    """At least one sink, each one of :data:`SINK_NAMES`, no duplicates."""
    if not value:
        raise ValueError(f"name at least one sink ({', '.join(SINK_NAMES)})")
    for name in value:
        if name not in SINK_NAMES:
            raise ValueError(f"unknown sink {name!r} (known: {', '.join(SINK_NAMES)})")
    if len(set(value)) != len(value):
        raise ValueError("a sink is named twice")
    return value


def redacted(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for logs and errors)."""
    return without_userinfo(url, "***@")


def parse_endpoint(value: str) -> str:
    """An OTLP endpoint: ``scheme://host:port[/path]`` or ``host:port`` (gRPC).

    ``user:password@`` is refused rather than sent as basic authentication (aiohttp's
    way with it): credentials go in the headers, which are a secret setting.
    """
    return _endpoint(
        value,
        "send them as a header with FLOWSCOPE_OTLP_HEADERS or OTEL_EXPORTER_OTLP_HEADERS "
        "(authorization=Basic%20<base64 of user:password>)",
    )


def parse_http_url(value: str) -> str:
    """An http(s) URL with a host and no credentials (the Elasticsearch endpoint).

    ``user:password@`` is refused rather than used: the URL appears in logs and error
    messages, a password does not belong there.
    """
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{redacted(value)!r} is not an http:// or https:// URL")
    return _endpoint(
        value, "set username with password or password_file, or api_key / api_key_file"
    )


def _endpoint(value: str, credentials_go: str) -> str:
    """``value`` checked as an endpoint (empty: none); ``credentials_go`` says where
    credentials go instead of the URL, which is logged and, as a flag, shown by ps."""
    if not value:
        return value
    has_scheme = "://" in value
    parts = urlsplit(value if has_scheme else f"//{value}")
    shown = repr(redacted(value))
    if "@" in parts.netloc:
        raise ValueError(
            f"{shown}: credentials in the URL are refused (URLs are logged, flags shown "
            f"by ps): {credentials_go}"
        )
    if has_scheme and parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{shown} has no host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"{shown} has a bad port") from e
    return value


def parse_headers(value: str) -> str:
    """``key=value,key2=value2`` as in ``OTEL_EXPORTER_OTLP_HEADERS`` (values URL-encoded).

    Every item must be sendable by both transports, or each export would fail at the
    first request: a name of letters, digits, ``-``, ``_`` and ``.`` (gRPC metadata's
    rule, within HTTP's), a decoded value of printable ASCII (no line break: no header
    injection). A bad item is named by its position, never shown: it is often a bare
    token.
    """
    for position, item in enumerate(value.split(","), 1):
        if not item.strip():
            continue
        key, equals, encoded = item.partition("=")
        if not equals:
            raise ValueError(f"item {position} of the header list is not key=value")
        if not HEADER_NAME.fullmatch(key.strip().lower()):
            raise ValueError(
                f"item {position} of the header list has no header name before '=' "
                "(letters, digits, '-', '_', '.')"
            )
        if not HEADER_VALUE.fullmatch(unquote(encoded.strip())):
            raise ValueError(
                f"item {position} of the header list has a value with a character other "
                "than printable ASCII (a line break, a tab, ...) once URL-decoded"
            )
    return value


def optional_positive(value: float | None) -> float | None:
    """Unset (None: another source or a default decides), or a number greater than 0."""
    return value if value is None else positive(value)


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """OTLP logs export (``--otlp-*``); empty values fall back to ``OTEL_EXPORTER_OTLP_*``."""

    endpoint: str = setting(
        "",
        "OTLP endpoint URL; empty: OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / _ENDPOINT, else "
        "localhost:4317 (gRPC) or http://localhost:4318/v1/logs (HTTP)",
        parse=parse_endpoint,
    )
    protocol: str = setting(
        "",
        "grpc or http/protobuf; empty: OTEL_EXPORTER_OTLP_(LOGS_)PROTOCOL, else http/protobuf "
        "(the OTel specification's default)",
        choices=("", "grpc", "http/protobuf"),
    )
    headers: str = setting(
        "",
        "extra request headers key=value,... (auth tokens: prefer the environment variable)",
        parse=parse_headers,
        secret=True,
    )
    compression: str = setting(
        "", "gzip or none; empty: OTEL_EXPORTER_OTLP_(LOGS_)COMPRESSION, else gzip",
        choices=("", "gzip", "none"),
    )  # fmt: skip
    ca_file: str = setting("", "CA bundle verifying the collector (TLS)", parse=readable_file)
    client_cert: str = setting(
        "", "client certificate for mutual TLS (PEM; set client_key with it)",
        parse=readable_file,
    )  # fmt: skip
    client_key: str = setting(
        "", "client certificate's private key (PEM; set client_cert with it)",
        parse=readable_file,
    )  # fmt: skip
    insecure: bool | None = setting(
        None,
        "plaintext gRPC for an endpoint without scheme (a local collector); empty: "
        "OTEL_EXPORTER_OTLP_(LOGS_)INSECURE, else false",
    )
    timeout: float | None = setting(
        None,
        "seconds one export request may take (greater than 0); empty: "
        "OTEL_EXPORTER_OTLP_(LOGS_)TIMEOUT (milliseconds), else 10 s as in the specification",
        parse=optional_positive,
    )


@dataclass(frozen=True, slots=True)
class ElasticsearchSettings:
    """Elasticsearch ``_bulk`` export into data streams (``--elasticsearch-*``)."""

    url: str = setting("http://localhost:9200", "Elasticsearch URL", parse=parse_http_url)
    username: str = setting("", "user for basic authentication", parse=parse_secret)
    password: str = setting(
        "", "password for basic auth (use the environment)", parse=parse_secret, secret=True
    )
    api_key: str = setting(
        "", "API key (base64 id:key, as Elasticsearch returns it; use the environment)",
        parse=parse_secret, secret=True,
    )  # fmt: skip
    password_file: str = setting(
        "", "file holding the password (a mounted Secret); wins over password",
        parse=readable_file,
    )  # fmt: skip
    api_key_file: str = setting(
        "", "file holding the API key (a mounted Secret); wins over api_key",
        parse=readable_file,
    )  # fmt: skip
    ca_file: str = setting("", "CA bundle verifying Elasticsearch (TLS)", parse=readable_file)
    client_cert: str = setting(
        "", "client certificate for mutual TLS (PEM; set client_key with it)",
        parse=readable_file,
    )  # fmt: skip
    client_key: str = setting(
        "", "client certificate's private key (PEM; set client_cert with it)",
        parse=readable_file,
    )  # fmt: skip
    flows_data_stream: str = setting(
        "logs-flowscope.flows-default",
        "data stream for flow records (logs-<dataset>-<namespace> matches the template)",
    )
    dns_data_stream: str = setting("logs-flowscope.dns-default", "data stream for DNS records")
    install_template: bool = setting(
        True,
        "install the flowscope index template at start-up (needs manage_index_templates; "
        "turn off when an administrator manages templates)",
    )
    timeout: float = setting(30.0, "seconds one _bulk request may take", parse=positive)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How each sink batches and retries (``--batch-*``)."""

    max_records: int = setting(
        1000,
        "records per export request at most: large enough to amortise a request, small "
        "enough for one _bulk body of about 1 MB",
        parse=lambda v: int(positive(v)),
    )
    max_delay: float = setting(
        0.5,
        "seconds a partial batch waits for more records before it is exported (latency bound)",
        parse=positive,
    )
    max_in_flight: int = setting(
        4,
        "export requests per sink at once; beyond it the sink's consumers stop fetching",
        parse=lambda v: int(positive(v)),
    )
    ack_wait: float = setting(
        30.0,
        "seconds JetStream waits for an ack before redelivering (batches waiting on a "
        "backend are kept alive every ack_wait/3); an existing consumer is updated to it",
        parse=positive,
    )
    retry_initial: float = setting(
        0.5, "seconds before the first retry of a failed export (then doubled, jittered)",
        parse=positive,
    )  # fmt: skip
    retry_max: float = setting(
        30.0, "upper bound in seconds of the retry backoff (a backend down for long)",
        parse=positive,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """The durable JetStream consumers the sinks read through (``--consumer-*``)."""

    durable: str = setting(
        DEFAULT_DURABLE,
        "durable consumer name, suffixed by sink (-stdout, -otlp, -elasticsearch): "
        "replicas of one exporter share it (and split the records); exporters that must "
        "each get every record (two releases on one NATS, a debugging exporter) need "
        "different ones",
        parse=durable_base(SINK_NAMES),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the exporter can be told."""

    runtime: RuntimeSettings = section(RuntimeSettings, "logs, HTTP endpoint, drain", flat=True)
    nats: NatsSettings = section(NatsSettings, "NATS connection and streams")
    sinks: tuple[str, ...] = setting(
        ("stdout",),
        "sinks to deliver to, comma-separated: stdout, otlp, elasticsearch",
        parse=parse_sinks,
    )
    cluster_name: str = setting(
        "", "cluster name sent as k8s.cluster.name / orchestrator.cluster.name (empty: none)"
    )
    otlp: OtlpSettings = section(OtlpSettings, "OTLP logs export")
    elasticsearch: ElasticsearchSettings = section(ElasticsearchSettings, "Elasticsearch")
    batch: BatchSettings = section(BatchSettings, "batching and retries per sink")
    consumer: ConsumerSettings = section(ConsumerSettings, "JetStream consumers")
