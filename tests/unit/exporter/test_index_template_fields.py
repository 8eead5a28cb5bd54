"""The index template fixes the type of every field a contract record is mapped to.

A field the template leaves to dynamic mapping gets its type from the first document
of each backing index that has it. A record of another version that the exporter
passes (the contract checks that ``flow.tcp.flags.tags`` is a list, not what it holds)
would then decide it for all the documents after it: TCP flags sent as numbers made
``flowscope.flow.tcp.flags.tags`` a ``long``, a ``source.k8s.workload`` key made
``flowscope.source.k8s.workload`` a keyword where ``.kind`` needs an object, and
Elasticsearch refused every ordinary flow record until the next rollover.
"""

from __future__ import annotations

from typing import Any

from flowscope.core.records import DNS_REQUIRED, ENDPOINT_OPTIONAL, FLOW_OPTIONAL, FLOW_REQUIRED
from flowscope.exporter import ecs

# Label keys go to {side}.kubernetes.labels.<key>: any key, always a keyword leaf, by the
# template's "labels" dynamic template whatever the value's JSON type.
LABEL_FIELD = ".kubernetes.labels."


def every_key(required: dict[str, type]) -> dict[str, Any]:
    """A record holding every key the contract names, with a value of its type."""
    sample = {str: "x", int: 1, list: ["SYN"]}
    keys = {**required, **FLOW_OPTIONAL}
    record = {key: sample[t] for key, t in keys.items()}
    record["source.k8s.pod.labels.app.kubernetes.io/name"] = "client"
    if "dns.answers" in record:
        record["dns.answers"] = [{"name": "a.example", "type": "A", "ttl": 30, "data": "10.0.0.9"}]
    return record


def template_types() -> dict[str, str]:
    """Dotted field → type, as the template's ``properties`` declare them."""
    body = ecs.index_template(("logs-flowscope.flows-default", "logs-flowscope.dns-default"))
    out: dict[str, str] = {}

    def walk(properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            if "properties" in spec:
                walk(spec["properties"], f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = spec["type"]

    walk(body["template"]["mappings"]["properties"], "")
    return out


def leaves(doc: dict[str, Any]) -> list[str]:
    """The document's fields, those of objects in a list (DNS answers) included."""
    out = []
    for field, value in doc.items():
        objects = [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
        out += [f"{field}.{key}" for v in objects for key in v] if objects else [field]
    return out


def unmapped(doc: dict[str, Any]) -> list[str]:
    types = template_types()
    return [field for field in leaves(doc) if field not in types and LABEL_FIELD not in field]


def test_every_flow_document_field_is_mapped_by_the_template() -> None:
    doc = ecs.EcsMapper("prod").flow(every_key(FLOW_REQUIRED))
    assert unmapped(doc) == []


def test_every_dns_document_field_is_mapped_by_the_template() -> None:
    doc = ecs.EcsMapper("prod").dns(every_key(DNS_REQUIRED))
    assert unmapped(doc) == []


def test_contract_keys_without_an_ecs_field_are_keywords() -> None:
    """``flow.end_reason``, ``flow.direction``, the TCP flag tags, the endpoint kinds
    and workloads: text the contract names, kept under ``flowscope.``."""
    types = template_types()
    sides = ("source", "destination")
    keys = ["flow.end_reason", "flow.direction", "flow.tcp.flags.tags"]
    keys += [f"{side}.kind" for side in sides]
    keys += [f"{side}.{key}" for side in sides for key in ENDPOINT_OPTIONAL if "workload" in key]
    assert {key: types.get(f"flowscope.{key}") for key in keys} == dict.fromkeys(keys, "keyword")
