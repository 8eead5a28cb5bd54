"""What an address resolves to: an :class:`Identity`, ready to be copied into a record.

An identity carries its wire keys already prefixed for both sides (``source.*`` and
``destination.*``), so that enriching a flow copies two small dicts instead of building
keys per record — the hot path's biggest saving. The :class:`Resolver` protocol is the
seam between the enricher and where metadata comes from: the Kubernetes inventory, or
the local host's addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from flowscope.core import subjects

SIDES = ("source", "destination")


@dataclass(slots=True)
class Identity:
    """One endpoint address as resolved: kind, subject token, home node, wire keys."""

    kind: str  # pod, service, node, host, external
    token: str  # namespace subject token: a namespace, or _node/_host/_external
    home: str  # node the endpoint lives on ('' when unknown): the cross-node merge key
    source: dict[str, Any]  # source.* wire keys (address, kind, metadata)
    destination: dict[str, Any]  # destination.* wire keys
    pod_uid: str = ""  # the pod, when the identity is one (container-id refinement)
    # The same keys as JSON object members, without braces (``"source.address":"…",…``),
    # rendered once: a record's line is joined from them (see enriching.render_line).
    source_json: bytes = field(init=False, repr=False, compare=False)
    destination_json: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.source_json = orjson.dumps(self.source)[1:-1]
        self.destination_json = orjson.dumps(self.destination)[1:-1]


def identity(kind: str, token: str, home: str, address: str, meta: dict[str, Any]) -> Identity:
    """Build an identity whose wire keys are ``<side>.address``, ``<side>.kind``, meta."""
    wires = []
    for side in SIDES:
        wire: dict[str, Any] = {f"{side}.address": address, f"{side}.kind": kind}
        for key, value in meta.items():
            wire[f"{side}.{key}"] = value
        wires.append(wire)
    uid = str(meta.get("k8s.pod.uid", ""))
    return Identity(kind, subjects.token(token), home, wires[0], wires[1], uid)


def external(address: str) -> Identity:
    return identity("external", subjects.EXTERNAL_TOKEN, "", address, {})


class Resolver(Protocol):
    """Address and container id → identity (the Kubernetes inventory, or local mode)."""

    @property
    def ready(self) -> bool:
        """True once the metadata source has been fully loaded once."""
        ...

    def resolve(self, address: str) -> Identity:
        """The identity of a canonical address (``external`` when nothing matches)."""
        ...

    def by_container(self, container_id: str) -> Identity | None:
        """The pod (and that exact container) a runtime container id belongs to."""
        ...
