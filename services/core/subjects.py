"""Every NATS subject and JetStream stream flowscope uses, spelled in one place.

See docs/records.md ("NATS subjects"). Variable parts become exactly one subject token:
:func:`token` replaces the characters NATS treats specially (``.``, ``*``, ``>``,
whitespace) so that a node called ``ip-10-0-0-1.ec2.internal`` cannot split a subject.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "flowscope"

RAW_FLOWS = f"{PREFIX}.raw.flows"
RAW_SOCKETS = f"{PREFIX}.raw.sockets"
RAW_DNS = f"{PREFIX}.raw.dns"
RAW_ALL = f"{PREFIX}.raw.>"
FLOWS = f"{PREFIX}.flows"
FLOWS_ALL = f"{PREFIX}.flows.>"
DNS = f"{PREFIX}.dns"
DNS_ALL = f"{PREFIX}.dns.>"
DLQ = f"{PREFIX}.dlq"
DLQ_ALL = f"{PREFIX}.dlq.>"

# Namespace tokens for endpoints that are not pods (DESIGN.md "NATS subjects").
NODE_TOKEN = "_node"
HOST_TOKEN = "_host"
EXTERNAL_TOKEN = "_external"
# An endpoint's kind → its token (a pod's or a service's is its namespace's token).
KIND_TOKENS = {"node": NODE_TOKEN, "host": HOST_TOKEN, "external": EXTERNAL_TOKEN}

# Header carrying the reason on dead-lettered messages.
DLQ_REASON_HEADER = "Flowscope-Dlq-Reason"
DLQ_SUBJECT_HEADER = "Flowscope-Dlq-Subject"
# on a copy cut to fit the server's max_payload: the original body's length in bytes
DLQ_TRUNCATED_HEADER = "Flowscope-Dlq-Truncated"

_UNSAFE = re.compile(r"[.*>\s\x00-\x1f\x7f]")


def token(name: str) -> str:
    """One subject token from an arbitrary name (node or namespace): never empty."""
    return _UNSAFE.sub("_", name) or "_"


def raw_flows(node: str) -> str:
    return f"{RAW_FLOWS}.{token(node)}"


def raw_sockets(node: str) -> str:
    return f"{RAW_SOCKETS}.{token(node)}"


def raw_dns(node: str) -> str:
    return f"{RAW_DNS}.{token(node)}"


def flows(src_namespace: str, dst_namespace: str) -> str:
    return f"{FLOWS}.{token(src_namespace)}.{token(dst_namespace)}"


def dns(client_namespace: str) -> str:
    return f"{DNS}.{token(client_namespace)}"


def dlq(component: str) -> str:
    return f"{DLQ}.{token(component)}"


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A JetStream stream flowscope creates: its name and the subjects it captures."""

    name: str
    subjects: tuple[str, ...]
    description: str
    # Drop a message whose Nats-Msg-Id is already stored for as long as messages are
    # kept, instead of the server's default two minutes. For the DLQ: every exporter
    # sink has its own consumer and dead-letters a bad message itself, possibly hours
    # after another sink did (it was down), and the copy must still be stored once.
    dedup_whole_retention: bool = False


STREAMS = (
    StreamSpec("FLOWSCOPE_RAW", (RAW_ALL,), "collector → enricher raw events"),
    StreamSpec("FLOWSCOPE_FLOWS", (FLOWS_ALL,), "enriched flow records"),
    StreamSpec("FLOWSCOPE_DNS", (DNS_ALL,), "enriched DNS records"),
    StreamSpec("FLOWSCOPE_DLQ", (DLQ_ALL,), "messages a component could not process", True),
)
STREAM_RAW, STREAM_FLOWS, STREAM_DNS, STREAM_DLQ = (s.name for s in STREAMS)
