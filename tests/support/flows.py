"""Enriched flow records for tests, built through the contract's own value types."""

from __future__ import annotations

from typing import Any

from flowscope.core import codec, records, subjects
from flowscope.core.codec import Batch


def pod(namespace: str, name: str, address: str, port: int, **meta: Any) -> records.Endpoint:
    """A pod endpoint; ``meta`` keys use underscores for dots (``process_pid``)."""
    extra = {k.replace("_", "."): v for k, v in meta.items()}
    return records.Endpoint(
        address, port, "pod", {"k8s.namespace.name": namespace, "k8s.pod.name": name, **extra}
    )


def external(address: str, port: int, domain: str | None = None) -> records.Endpoint:
    return records.Endpoint(address, port, "external", {"domain": domain} if domain else {})


def flow(
    source: records.Endpoint,
    destination: records.Endpoint,
    *,
    transport: str = "tcp",
    node: str = "node-a",
    sent: int = 1200,
    back: int = 3400,
    end_ns: int = 1_700_000_000_000_000_000,
    flags: list[str] | None = None,
) -> dict[str, Any]:
    """One enriched flow record as a wire dict."""
    return records.FlowRecord(
        community_id=f"1:{source.address}:{source.port}-{destination.address}",
        start_ns=end_ns - 1_000_000_000,
        end_ns=end_ns,
        end_reason="active_timeout",
        direction="forward",
        network_type="ipv6" if ":" in source.address else "ipv4",
        transport=transport,
        source=source,
        destination=destination,
        bytes=sent,
        packets=3,
        reverse_bytes=back,
        reverse_packets=4,
        observer_node=node,
        tcp_flags=(["SYN", "ACK"] if flags is None else flags) if transport == "tcp" else None,
    ).to_wire()


def namespace_token(endpoint_record: dict[str, Any], side: str) -> str:
    namespace = endpoint_record.get(f"{side}.k8s.namespace.name")
    if namespace:
        return str(namespace)
    return subjects.EXTERNAL_TOKEN


def subject_of(record: dict[str, Any]) -> str:
    """The subject the enricher publishes ``record`` on (DESIGN.md "NATS subjects")."""
    return subjects.flows(namespace_token(record, "source"), namespace_token(record, "destination"))


def batch(*flows: dict[str, Any]) -> Batch:
    return codec.encode(codec.FLOW, flows)
