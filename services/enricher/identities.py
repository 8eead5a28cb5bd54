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


# meta key → its source.* and destination.* wire keys (a few dozen distinct keys: the
# k8s.* names and the allow-listed labels); an address seen for the first time builds
# its identity, so this is on the path of every new connection's first record
_SIDED: dict[str, tuple[str, str]] = {}


def _sided(key: str) -> tuple[str, str]:
    """A meta key's wire keys, on its first use (identity() looks _SIDED up itself)."""
    found = _SIDED[key] = (f"source.{key}", f"destination.{key}")
    return found


def identity(kind: str, token: str, home: str, address: str, meta: dict[str, Any]) -> Identity:
    """Build an identity whose wire keys are ``<side>.address``, ``<side>.kind``, meta."""
    source: dict[str, Any] = {"source.address": address, "source.kind": kind}
    destination: dict[str, Any] = {"destination.address": address, "destination.kind": kind}
    for key, value in meta.items():
        source_key, destination_key = _SIDED.get(key) or _sided(key)
        source[source_key] = value
        destination[destination_key] = value
    uid = str(meta.get("k8s.pod.uid", ""))
    return Identity(kind, subjects.token(token), home, source, destination, uid)


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
