"""What an address resolves to: an :class:`Identity`, ready to be copied into a record.

An identity carries its wire keys already rendered for both sides (``source.*`` and
``destination.*`` JSON members), so that enriching a flow joins two byte strings
instead of building keys per record — the hot path's biggest saving. The
:class:`Resolver` protocol is the seam between the enricher and where metadata comes
from: the Kubernetes inventory, or the local host's addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from flowscope.core import subjects

try:  # the compiled core renders an identity's JSON members (flowcore.c, sided_json)
    from flowscope.enricher import _flowcore
except ImportError:  # pragma: no cover - a build without a C compiler
    _flowcore = None  # type: ignore[assignment]


@dataclass(slots=True)
class Identity:
    """One endpoint address as resolved: kind, subject token, home node, wire keys.

    Its wire keys are ``<side>.address``, ``<side>.kind`` and ``<side>.<key>`` for each
    ``meta`` item, in that order, with ``<side>`` ``source`` or ``destination``. A record
    joins their JSON members (``source_json``, ``destination_json``, rendered once); the
    dicts (:attr:`source`, :attr:`destination`) are built on first use, which only the
    Python path's records, DNS records and NAT'ed flows make.
    """

    kind: str  # pod, service, node, host, external
    token: str  # namespace subject token: a namespace, or _node/_host/_external
    home: str  # node the endpoint lives on ('' when unknown): the cross-node merge key
    address: str  # canonical text
    meta: dict[str, Any]  # the other wire keys, without the side's prefix (k8s.*)
    pod_uid: str = ""  # the pod, when the identity is one (container-id refinement)
    # A container's identity (Resolver.by_container) at its pod's first address: the same
    # container at each of the pod's other addresses (a dual-stack pod), whose Services may
    # differ; a socket's container id refines an endpoint to the one at its address.
    elsewhere: dict[str, Identity] | None = field(default=None, repr=False)
    # The wire keys as JSON object members, without braces (``"source.address":"…",…``),
    # rendered once: a record's line is joined from them (see enriching.render_line).
    source_json: bytes = field(init=False, repr=False, compare=False)
    destination_json: bytes = field(init=False, repr=False, compare=False)
    _sides: tuple[dict[str, Any], dict[str, Any]] | None = field(
        init=False, default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        pair = None
        if _flowcore is not None:
            pair = _flowcore.sided_json(self.address, self.kind, self.meta)
        if pair is None:  # a key or value JSON escapes: orjson renders it
            pair = orjson.dumps(self.source)[1:-1], orjson.dumps(self.destination)[1:-1]
        self.source_json, self.destination_json = pair

    @property
    def source(self) -> dict[str, Any]:
        """The ``source.*`` wire keys (built on first use; not to be changed)."""
        return (self._sides or self._build_sides())[0]

    @property
    def destination(self) -> dict[str, Any]:
        """The ``destination.*`` wire keys (built on first use; not to be changed)."""
        return (self._sides or self._build_sides())[1]

    def _build_sides(self) -> tuple[dict[str, Any], dict[str, Any]]:
        source: dict[str, Any] = {"source.address": self.address, "source.kind": self.kind}
        destination: dict[str, Any] = {
            "destination.address": self.address, "destination.kind": self.kind
        }  # fmt: skip
        for key, value in self.meta.items():
            source_key, destination_key = _SIDED.get(key) or _sided(key)
            source[source_key] = value
            destination[destination_key] = value
        self._sides = source, destination
        return self._sides


# meta key → its source.* and destination.* wire keys (a few dozen distinct keys: the
# k8s.* names and the allow-listed labels)
_SIDED: dict[str, tuple[str, str]] = {}


def _sided(key: str) -> tuple[str, str]:
    """A meta key's wire keys, on its first use (_build_sides looks _SIDED up itself)."""
    found = _SIDED[key] = (f"source.{key}", f"destination.{key}")
    return found


# namespace or node name → its subject token (subjects.token's regex, once per name)
_TOKENS: dict[str, str] = {}
MAX_TOKENS = 100_000


def identity(kind: str, token: str, home: str, address: str, meta: dict[str, Any]) -> Identity:
    """Build an identity whose wire keys are ``<side>.address``, ``<side>.kind``, meta.

    An address seen for the first time builds its identity, so this is on the path of
    every new connection's first record: ``meta`` is kept as given (not copied)."""
    found = _TOKENS.get(token)
    if found is None:
        if len(_TOKENS) >= MAX_TOKENS:
            _TOKENS.clear()
        found = _TOKENS[token] = subjects.token(token)
    uid = meta.get("k8s.pod.uid", "")
    return Identity(kind, found, home, address, meta, uid if type(uid) is str else str(uid))


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

    def other_addresses(self, address: str) -> tuple[str, ...]:
        """The other addresses of the pod ``address`` resolves to (dual-stack
        ``status.podIPs``) that still resolve to it; none for anything but a pod."""
        ...
