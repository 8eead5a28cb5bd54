"""Enriched records for exporter tests, built with the contract's own value types."""

from __future__ import annotations

from typing import Any

from flowscope.core.community_id import community_id
from flowscope.core.records import DnsRecord, Endpoint, FlowRecord

BASE_NS = 1_763_700_000_123_456_789


def flow(i: int = 0, **extra: Any) -> dict[str, Any]:
    """A pod→pod TCP flow record (wire form); ``i`` makes it distinct."""
    sport = 40000 + i % 20000
    record = FlowRecord(
        community_id=community_id(6, "10.0.0.1", "10.0.1.2", sport, 8080),
        start_ns=BASE_NS + i * 1000,
        end_ns=BASE_NS + i * 1000 + 5_000_000_000,
        end_reason="active_timeout",
        direction="forward",
        network_type="ipv4",
        transport="tcp",
        source=Endpoint(
            "10.0.0.1",
            sport,
            "pod",
            {
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "client-7d9f",
                "k8s.pod.uid": "8b7c7a0e-1111-2222-3333-444455556666",
                "k8s.workload.kind": "Deployment",
                "k8s.workload.name": "client",
                "k8s.deployment.name": "client",
                "k8s.pod.labels.app.kubernetes.io/name": "client",
                "process.pid": 4242,
                "process.executable.name": "curl",
            },
        ),
        destination=Endpoint(
            "10.0.1.2",
            8080,
            "pod",
            {
                "k8s.namespace.name": "payments",
                "k8s.pod.name": "api-5c6b",
                "k8s.service.name": "api",
                "k8s.node.name": "node-b",
                "domain": "api.payments.svc.cluster.local",
            },
        ),
        bytes=1500 + i,
        packets=10,
        reverse_bytes=64000,
        reverse_packets=40,
        observer_node="node-a",
        tcp_flags=["SYN", "ACK", "FIN"],
    ).to_wire()
    record.update(extra)
    return record


def dns(i: int = 0) -> dict[str, Any]:
    """An A query answered NOERROR."""
    return DnsRecord(
        time_ns=BASE_NS + i,
        id=1000 + i,
        question_name="api.payments.svc.cluster.local",
        question_type="A",
        response_code="NOERROR",
        answers=[
            {"name": "api.payments.svc.cluster.local", "type": "A", "ttl": 30, "data": "10.0.1.2"}
        ],
        latency_ns=250_000,
        client=Endpoint("10.0.0.1", 53000 + i % 1000, "pod", {"k8s.namespace.name": "shop"}),
        server=Endpoint("10.96.0.10", 53, "service", {"k8s.service.name": "kube-dns"}),
        observer_node="node-a",
    ).to_wire()
