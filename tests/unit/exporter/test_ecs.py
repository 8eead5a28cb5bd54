"""ECS mapping, deterministic ids and the index template."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from flowscope.exporter import ecs
from flowscope.exporter.sink import Kind
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.exporter.sample import BASE_NS, dns, flow
from tests.unit.exporter.strategies import flow_records


def test_flow_document_is_mapped_to_ecs() -> None:
    record = flow(0)
    doc = ecs.EcsMapper("prod").flow(record)
    assert doc == {
        "@timestamp": "2025-11-21T04:40:05.123456789Z",
        "event.kind": "event",
        "event.category": ["network"],
        "event.type": ["connection"],
        "event.dataset": "flowscope.flows",
        "event.start": "2025-11-21T04:40:00.123456789Z",
        "event.end": "2025-11-21T04:40:05.123456789Z",
        "event.duration": 5_000_000_000,
        "network.community_id": record["flow.community_id"],
        "network.type": "ipv4",
        "network.transport": "tcp",
        "network.bytes": 1500 + 64000,
        "network.packets": 50,
        "source.bytes": 1500,
        "source.packets": 10,
        "destination.bytes": 64000,
        "destination.packets": 40,
        "observer.hostname": "node-a",
        "orchestrator.type": "kubernetes",
        "orchestrator.cluster.name": "prod",
        "source.ip": "10.0.0.1",
        "source.port": 40000,
        "destination.ip": "10.0.1.2",
        "destination.port": 8080,
        "destination.domain": "api.payments.svc.cluster.local",
        "source.kubernetes.namespace": "shop",
        "source.kubernetes.pod.name": "client-7d9f",
        "source.kubernetes.pod.uid": "8b7c7a0e-1111-2222-3333-444455556666",
        "source.kubernetes.deployment.name": "client",
        "source.kubernetes.labels.app_kubernetes_io/name": "client",
        "source.process.pid": 4242,
        "source.process.name": "curl",
        "destination.kubernetes.namespace": "payments",
        "destination.kubernetes.pod.name": "api-5c6b",
        "destination.kubernetes.service.name": "api",
        "destination.kubernetes.node.name": "node-b",
        "flowscope.flow.end_reason": "active_timeout",
        "flowscope.flow.direction": "forward",
        "flowscope.flow.tcp.flags.tags": ["SYN", "ACK", "FIN"],
        "flowscope.source.kind": "pod",
        "flowscope.source.k8s.workload.kind": "Deployment",
        "flowscope.source.k8s.workload.name": "client",
        "flowscope.destination.kind": "pod",
    }


def test_dns_document_is_mapped_to_ecs() -> None:
    record = dns(0)
    doc = ecs.EcsMapper().dns(record)
    assert doc["@timestamp"] == "2025-11-21T04:40:00.123456789Z"
    assert doc["dns.question.name"] == "api.payments.svc.cluster.local"
    assert doc["dns.answers"] == record["dns.answers"]
    assert doc["dns.response_code"] == "NOERROR"
    assert doc["event.duration"] == 250_000
    assert doc["destination.kubernetes.service.name"] == "kube-dns"
    assert doc["source.ip"] == "10.0.0.1"
    assert "orchestrator.type" not in doc
    assert "flowscope.time_ns" not in doc


def test_every_record_key_lands_somewhere() -> None:
    """No key of the record is silently dropped by the mapping."""
    record = flow(3)
    doc = ecs.EcsMapper().flow(record)
    values = [v for v in doc.values()]
    for key, value in record.items():
        if key in ("flow.start_ns", "flow.end_ns"):
            continue
        assert value in values, key


def test_document_ids_are_deterministic_and_distinct() -> None:
    assert ecs.document_id(Kind.FLOW, flow(1)) == ecs.document_id(Kind.FLOW, flow(1))
    ids = {ecs.document_id(Kind.FLOW, flow(i)) for i in range(1000)}
    assert len(ids) == 1000
    later = flow(1, **{"flow.start_ns": BASE_NS + 10**10, "flow.end_ns": BASE_NS + 2 * 10**10})
    assert ecs.document_id(Kind.FLOW, later) != ecs.document_id(Kind.FLOW, flow(1))
    assert ecs.document_id(Kind.DNS, dns(1)) != ecs.document_id(Kind.DNS, dns(2))
    assert len(ecs.document_id(Kind.FLOW, flow(1))) == 20


def test_timestamps_keep_nanoseconds_across_seconds() -> None:
    stamps = ecs.Timestamps()
    assert stamps.iso(0) == "1970-01-01T00:00:00.000000000Z"
    assert stamps.iso(1_999_999_999) == "1970-01-01T00:00:01.999999999Z"
    assert stamps.iso(2_000_000_001) == "1970-01-01T00:00:02.000000001Z"


def test_index_template_outranks_builtin_logs_template() -> None:
    body = ecs.index_template(("logs-flowscope.flows-default", "logs-flowscope.dns-default"))
    assert body["index_patterns"] == ["logs-flowscope.flows-default", "logs-flowscope.dns-default"]
    assert body["data_stream"] == {}
    assert body["priority"] > 100
    props = body["template"]["mappings"]["properties"]
    assert props["@timestamp"] == {"type": "date_nanos"}
    assert props["source"]["properties"]["ip"] == {"type": "ip"}
    assert props["network"]["properties"]["bytes"] == {"type": "long"}
    k8s = props["destination"]["properties"]["kubernetes"]["properties"]
    assert k8s["pod"]["properties"]["name"] == {"type": "keyword"}


@settings(max_examples=150, deadline=None)
@given(records=st.lists(flow_records(odd_types=True), min_size=1, max_size=5))
def test_flow_entry_is_the_id_and_flow_document(records: list[dict[str, Any]]) -> None:
    """The fast path (per-shape plan, pre-encoded head) decodes to exactly ``flow()``
    serialised as before, also when shapes repeat with other values."""
    mapper = ecs.EcsMapper("prod")
    for record in records + records:
        expected = orjson.loads(orjson.dumps(mapper.flow(record)))  # inf → null, as before
        doc_id, line = mapper.flow_entry(record)
        assert orjson.loads(line) == expected
        assert line.endswith(b"}\n") and line.count(b"\n") == 1  # one NDJSON line
        assert mapper.entry(Kind.FLOW)(record) == (doc_id, line)
        assert doc_id == ecs.document_id_bytes(Kind.FLOW, record)


def test_document_id_bytes_is_the_id() -> None:
    assert ecs.document_id_bytes(Kind.FLOW, flow(1)).decode() == ecs.document_id(Kind.FLOW, flow(1))


def test_document_ids_are_the_documented_digest() -> None:
    """The ``_id`` formula of docs/exporter.md: redelivery after an upgrade must hit the
    same ids, so the exact bytes are part of the contract."""

    def documented(key: str) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=15).digest()
        return base64.urlsafe_b64encode(digest).decode()

    record = flow(7)
    assert ecs.document_id(Kind.FLOW, record) == documented(
        f"{record['flow.community_id']}|node-a|{record['flow.start_ns']}|{record['flow.end_ns']}"
    )
    answer = dns(7)
    assert ecs.document_id(Kind.DNS, answer) == documented(
        f"{answer['time_ns']}|1007|10.0.0.1|{answer['source.port']}|node-a"
    )


def test_dns_entry_is_the_id_and_document_line() -> None:
    mapper = ecs.EcsMapper()
    doc_id, line = mapper.entry(Kind.DNS)(dns(3))
    assert doc_id == ecs.document_id_bytes(Kind.DNS, dns(3))
    assert line == orjson.dumps(mapper.dns(dns(3))) + b"\n"


@given(
    start=st.integers(min_value=0, max_value=2**63 - 1),
    length=st.integers(min_value=0, max_value=10**12),
)
def test_interval_is_both_timestamps(start: int, length: int) -> None:
    stamps = ecs.Timestamps()
    assert stamps.interval(start, start + length) == (stamps.iso(start), stamps.iso(start + length))
