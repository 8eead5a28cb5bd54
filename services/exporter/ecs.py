"""Flowscope records → Elastic Common Schema documents, ``_id`` s and the index template.

Pure functions, separate from the ``_bulk`` transport. Documents use flat dotted keys
(Elasticsearch expands them against the mapping). Kubernetes metadata uses the field
names of Elastic's Kubernetes integration, per endpoint: ``source.kubernetes.pod.name``,
``destination.kubernetes.namespace``, … (ECS has one top-level ``kubernetes`` object per
event, but a flow has two pods). Keys ECS has no field for are kept under
``flowscope.<original key>``. See docs/exporter.md for the full table.
"""

from __future__ import annotations

import binascii
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flowscope.exporter.sink import Kind, Record

# Record keys (without the source./destination. prefix) → ECS field under the same side.
SIDE_FIELDS = {
    "address": "ip",
    "port": "port",
    "domain": "domain",
    "k8s.namespace.name": "kubernetes.namespace",
    "k8s.pod.name": "kubernetes.pod.name",
    "k8s.pod.uid": "kubernetes.pod.uid",
    "k8s.container.name": "kubernetes.container.name",
    "k8s.node.name": "kubernetes.node.name",
    "k8s.deployment.name": "kubernetes.deployment.name",
    "k8s.replicaset.name": "kubernetes.replicaset.name",
    "k8s.statefulset.name": "kubernetes.statefulset.name",
    "k8s.daemonset.name": "kubernetes.daemonset.name",
    "k8s.job.name": "kubernetes.job.name",
    "k8s.cronjob.name": "kubernetes.cronjob.name",
    "k8s.service.name": "kubernetes.service.name",
    "process.pid": "process.pid",
    "process.executable.name": "process.name",
    "container.id": "container.id",
}
LABEL_PREFIX = "k8s.pod.labels."
FLOW_FIELDS = {
    "flow.community_id": "network.community_id",
    "network.type": "network.type",
    "network.transport": "network.transport",
    "flow.bytes.delta": "source.bytes",
    "flow.packets.delta": "source.packets",
    "flow.reverse.bytes.delta": "destination.bytes",
    "flow.reverse.packets.delta": "destination.packets",
    "observer.node.name": "observer.hostname",
}
DNS_FIELDS = {
    "dns.id": "dns.id",
    "dns.question.name": "dns.question.name",
    "dns.question.type": "dns.question.type",
    "dns.response_code": "dns.response_code",
    "dns.answers": "dns.answers",
    "dns.latency_ns": "event.duration",
    "observer.node.name": "observer.hostname",
}
# Keys turned into ECS fields by hand below (timestamps, totals).
FLOW_CONSUMED = frozenset({"flow.start_ns", "flow.end_ns"})
DNS_CONSUMED = frozenset({"time_ns"})


class Timestamps:
    """Unix nanoseconds → ISO 8601 with nanoseconds (``date_nanos``).

    The formatted second is cached: a batch's records fall into few distinct seconds.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._prefixes: dict[int, str] = {}

    def iso(self, ns: int) -> str:
        second, fraction = divmod(ns, 1_000_000_000)
        prefix = self._prefixes.get(second) or self._learn(second)
        return f"{prefix}{fraction:09d}Z"

    def interval(self, start: int, end: int) -> tuple[str, str]:
        """``(iso(start), iso(end))`` in one call (a flow document has both)."""
        prefixes = self._prefixes
        start_second, start_fraction = divmod(start, 1_000_000_000)
        end_second, end_fraction = divmod(end, 1_000_000_000)
        return (
            f"{prefixes.get(start_second) or self._learn(start_second)}{start_fraction:09d}Z",
            f"{prefixes.get(end_second) or self._learn(end_second)}{end_fraction:09d}Z",
        )

    def _learn(self, second: int) -> str:
        if len(self._prefixes) >= self.LIMIT:
            self._prefixes.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        self._prefixes[second] = prefix
        return prefix


def target_field(key: str, fields: dict[str, str]) -> str | None:
    """The document field a record key goes to (None: consumed elsewhere)."""
    target = fields.get(key)
    if target is not None:
        return target
    side, _, rest = key.partition(".")
    if side in ("source", "destination"):
        mapped = SIDE_FIELDS.get(rest)
        if mapped is not None:
            return f"{side}.{mapped}"
        if rest.startswith(LABEL_PREFIX):
            # Elastic de-dots label keys (app.kubernetes.io/name → app_kubernetes_io/name)
            # so that a label cannot turn a keyword into an object.
            return f"{side}.kubernetes.labels.{rest[len(LABEL_PREFIX) :].replace('.', '_')}"
    return f"flowscope.{key}"


class Renames:
    """Record keys → document fields, computed once per record *shape* (the hot path).

    Records from one enricher come in a few shapes (the same keys in the same order),
    so the target field names of a whole record are looked up with one tuple and the
    document filled with ``zip`` in C rather than key by key in Python.
    """

    LIMIT = 10_000  # shapes remembered; label keys are user data, so bounded

    def __init__(self, fields: dict[str, str], consumed: frozenset[str]) -> None:
        self._fields = fields
        self._consumed = consumed
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}

    def fill(self, doc: dict[str, Any], record: Record) -> None:
        """Copy ``record`` into ``doc`` under the document's field names."""
        shape = tuple(record)
        targets = self._shapes.get(shape)
        if targets is None:
            targets = self._learn(shape)
        doc.update(zip(targets, record.values(), strict=True))
        doc.pop("", None)  # the consumed keys

    def _learn(self, shape: tuple[str, ...]) -> tuple[str, ...]:
        targets = tuple(
            "" if key in self._consumed else target_field(key, self._fields) or "" for key in shape
        )
        if len(self._shapes) >= self.LIMIT:
            self._shapes.clear()
        self._shapes[shape] = targets
        return targets


# The six flow document fields computed per record, in the order _flow_document() fills them.
FLOW_COMPUTED = (
    "@timestamp",
    "event.start",
    "event.end",
    "event.duration",
    "network.bytes",
    "network.packets",
)


@dataclass(slots=True, frozen=True)
class FlowPlan:
    """How _flow_document() fills records of one shape (the same keys in the same order)."""

    # The document field of each record key, in the record's order; keys that have no
    # field of their own (start_ns, end_ns) write into a computed field, which is then
    # overwritten, so the record's values can be zipped in as they are, in C.
    fields: tuple[str, ...]
    # The document, reused: the constant fields stay, every other field is overwritten
    # per record, so filling it (no allocation, no resizing) equals building a new one.
    doc: dict[str, Any]


class EcsMapper:
    """Maps records to documents; carries the cluster name and a timestamp cache.

    ``flow`` / ``dns`` return documents as dicts (the reference mapping);
    ``flow_entry`` / ``dns_entry`` give a record's ``_id`` and the same document as its
    JSON line in one call, which is what the sink sends. The flow paths fill one reused document per
    record shape, so a mapper must not be shared between threads (the sink calls it from
    the event loop only).
    """

    PLAN_LIMIT = 10_000  # shapes remembered; label keys are user data, so bounded

    def __init__(self, cluster_name: str = "") -> None:
        self._stamps = Timestamps()
        self._flow_renames = Renames(FLOW_FIELDS, FLOW_CONSUMED)
        self._dns_renames = Renames(DNS_FIELDS, DNS_CONSUMED)
        self._orchestrator = (
            {"orchestrator.type": "kubernetes", "orchestrator.cluster.name": cluster_name}
            if cluster_name
            else {}
        )
        self._flow_constants = {
            "event.kind": "event",
            "event.category": ["network"],
            "event.type": ["connection"],
            "event.dataset": "flowscope.flows",
            **self._orchestrator,
        }
        self._flow_plans: dict[tuple[str, ...], FlowPlan] = {}
        # The last shape and its plan: consecutive records nearly always share a shape,
        # and comparing with the last one (its keys are the same string objects: literals,
        # or orjson's cached keys) is cheaper than hashing 30-odd keys for the dict.
        self._last: tuple[tuple[str, ...], FlowPlan | None] = ((), None)

    def flow(self, record: Record) -> dict[str, Any]:
        start, end = record["flow.start_ns"], record["flow.end_ns"]
        end_text = self._stamps.iso(end)
        doc: dict[str, Any] = {
            "@timestamp": end_text,
            "event.kind": "event",
            "event.category": ["network"],
            "event.type": ["connection"],
            "event.dataset": "flowscope.flows",
            "event.start": self._stamps.iso(start),
            "event.end": end_text,
            "event.duration": end - start,
            "network.bytes": record["flow.bytes.delta"] + record["flow.reverse.bytes.delta"],
            "network.packets": record["flow.packets.delta"] + record["flow.reverse.packets.delta"],
            **self._orchestrator,
        }
        self._flow_renames.fill(doc, record)
        return doc

    def dns(self, record: Record) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@timestamp": self._stamps.iso(record["time_ns"]),
            "event.kind": "event",
            "event.category": ["network"],
            "event.type": ["protocol"],
            "event.dataset": "flowscope.dns",
            "network.protocol": "dns",
            "dns.type": "answer",
            **self._orchestrator,
        }
        self._dns_renames.fill(doc, record)
        return doc

    def flow_entry(self, record: Record) -> tuple[bytes, bytes]:
        """What a ``_bulk`` body carries for a flow record: its ``_id`` (as
        ``document_id_bytes``) and its document line: ``flow(record)`` as JSON and a newline,
        written from the shape's reused document instead of a dict built field by field."""
        return flow_id_bytes(record), orjson.dumps(
            self._flow_document(record), option=orjson.OPT_APPEND_NEWLINE
        )

    def dns_entry(self, record: Record) -> tuple[bytes, bytes]:
        """``flow_entry`` for a DNS record."""
        return document_id_bytes(Kind.DNS, record), orjson.dumps(
            self.dns(record), option=orjson.OPT_APPEND_NEWLINE
        )

    def entry(self, kind: Kind) -> Callable[[Record], tuple[bytes, bytes]]:
        """``flow_entry`` or ``dns_entry``: chosen once per batch, called per record."""
        return self.flow_entry if kind is Kind.FLOW else self.dns_entry

    def _flow_document(self, record: Record) -> dict[str, Any]:
        """``flow(record)`` written into the shape's reused document (valid until the
        next call).

        Per record shape the target fields are resolved once (a ``FlowPlan``); then the
        record's values are zipped with them in C into the shape's document, whose
        constant fields were set when it was made, and the computed fields are written.
        """
        shape = tuple(record)
        last_shape, plan = self._last
        if plan is None or shape != last_shape:
            plan = self._flow_plans.get(shape) or self._learn_flow(shape)
            self._last = (shape, plan)
        start, end = record["flow.start_ns"], record["flow.end_ns"]
        start_text, end_text = self._stamps.interval(start, end)
        doc = plan.doc
        doc.update(zip(plan.fields, record.values(), strict=True))
        # The FLOW_COMPUTED fields, stored one by one: cheaper than a tuple and a zip.
        doc["@timestamp"] = end_text
        doc["event.start"] = start_text
        doc["event.end"] = end_text
        doc["event.duration"] = end - start
        doc["network.bytes"] = record["flow.bytes.delta"] + record["flow.reverse.bytes.delta"]
        doc["network.packets"] = record["flow.packets.delta"] + record["flow.reverse.packets.delta"]
        return doc

    def _learn_flow(self, shape: tuple[str, ...]) -> FlowPlan:
        placeholder = FLOW_COMPUTED[0]  # overwritten after the record's values
        targets = tuple(
            placeholder if key in FLOW_CONSUMED else target_field(key, FLOW_FIELDS) or placeholder
            for key in shape
        )
        # No record key maps to a constant or computed field (those are event.*,
        # orchestrator.*, @timestamp, network.bytes/packets), so only the placeholders
        # write there; record keys mapping to one field keep the last value, as flow()
        # does. The document's fields are in flow()'s order: constants, computed, record.
        doc = {**self._flow_constants, **dict.fromkeys(FLOW_COMPUTED), **dict.fromkeys(targets)}
        plan = FlowPlan(targets, doc)
        if len(self._flow_plans) >= self.PLAN_LIMIT:
            self._flow_plans.clear()
        self._flow_plans[shape] = plan
        return plan


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def document_id(kind: Kind, record: Record) -> str:
    """Deterministic ``_id``: the same flow interval (or DNS answer) always gets the same id.

    Flow: community ID, observer, start and end of the interval. DNS: time, query id,
    client address and port, observer. 120-bit BLAKE2b, URL-safe base64 (20 characters).
    """
    return document_id_bytes(kind, record).decode()


def document_id_bytes(kind: Kind, record: Record) -> bytes:
    """``document_id`` as ASCII bytes, for writing into a ``_bulk`` body."""
    if kind is Kind.FLOW:
        return flow_id_bytes(record)
    return _id_text(
        f"{record['time_ns']}|{record['dns.id']}|{record['source.address']}|"
        f"{record['source.port']}|{record['observer.node.name']}"
    )


def flow_id_bytes(record: Record) -> bytes:
    """``document_id_bytes`` of a flow record."""
    return _id_text(
        f"{record['flow.community_id']}|{record['observer.node.name']}|"
        f"{record['flow.start_ns']}|{record['flow.end_ns']}"
    )


_BLAKE2B_120 = hashlib.blake2b(digest_size=15)  # copied per id: cheaper than a constructor


def _id_text(key: str) -> bytes:
    hasher = _BLAKE2B_120.copy()
    hasher.update(key.encode())
    digest = hasher.digest()
    # binascii + translate: a third cheaper than base64.urlsafe_b64encode per call.
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE)


# ---------------------------------------------------------------- index template

TEMPLATE_NAME = "flowscope"
TEMPLATE_PRIORITY = 200  # above the built-in logs-*-* template (100)

_SIDE_TYPES = {
    "ip": "ip",
    "port": "long",
    "bytes": "long",
    "packets": "long",
    "domain": "keyword",
    "process.pid": "long",
    "process.name": "keyword",
    "container.id": "keyword",
    **{v: "keyword" for v in SIDE_FIELDS.values() if v.startswith("kubernetes.")},
}
# Contract keys ECS has no field for (kept as flowscope.<key>). Mapped here, not left to
# the first document of each backing index that has them: a record of another version
# that the contract lets through (TCP flags as numbers, one `source.k8s.workload` key)
# would fix their type, or make one of them a leaf where another needs an object, and
# Elasticsearch refused every ordinary flow record after it until the next rollover.
FLOWSCOPE_KEYWORDS = (
    "flow.end_reason",
    "flow.direction",
    "flow.tcp.flags.tags",
    *(
        f"{side}.{key}"
        for side in ("source", "destination")
        for key in ("kind", "k8s.workload.kind", "k8s.workload.name")
    ),
)
FIELD_TYPES = {
    "@timestamp": "date_nanos",
    "event.kind": "keyword",
    "event.category": "keyword",
    "event.type": "keyword",
    "event.dataset": "keyword",
    "event.start": "date_nanos",
    "event.end": "date_nanos",
    "event.duration": "long",
    "network.community_id": "keyword",
    "network.transport": "keyword",
    "network.type": "keyword",
    "network.protocol": "keyword",
    "network.bytes": "long",
    "network.packets": "long",
    "observer.hostname": "keyword",
    "orchestrator.type": "keyword",
    "orchestrator.cluster.name": "keyword",
    "dns.id": "keyword",
    "dns.type": "keyword",
    "dns.question.name": "keyword",
    "dns.question.type": "keyword",
    "dns.response_code": "keyword",
    "dns.answers.name": "keyword",
    "dns.answers.type": "keyword",
    "dns.answers.ttl": "long",
    "dns.answers.data": "keyword",
    **{f"{side}.{k}": t for side in ("source", "destination") for k, t in _SIDE_TYPES.items()},
    **{f"flowscope.{key}": "keyword" for key in FLOWSCOPE_KEYWORDS},
}


def _properties(types: dict[str, str]) -> dict[str, Any]:
    """Dotted field → type table as nested ``properties`` objects."""
    root: dict[str, Any] = {}
    for path, kind in types.items():
        node = root
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[leaf] = {"type": kind}
    return root


def index_template(data_streams: tuple[str, ...]) -> dict[str, Any]:
    """The body of ``PUT _index_template/flowscope`` for the configured data streams."""
    return {
        "index_patterns": list(data_streams),
        "data_stream": {},
        "priority": TEMPLATE_PRIORITY,
        "_meta": {"managed_by": "flowscope", "description": "flowscope flow and DNS records"},
        "template": {
            "settings": {"index": {"codec": "best_compression"}},
            "mappings": {
                "dynamic_templates": [
                    {
                        "labels": {
                            "path_match": "*.kubernetes.labels.*",
                            "mapping": {"type": "keyword"},
                        }
                    },
                    {
                        "flowscope_strings": {
                            "path_match": "flowscope.*",
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword"},
                        }
                    },
                ],
                "properties": _properties(FIELD_TYPES),
            },
        },
    }
