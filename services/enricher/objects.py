"""Kubernetes objects reduced to the fields the enricher needs.

Each resource's JSON becomes one small slots dataclass in exactly one function
(``*_from_json``); everything else in the object is dropped at once, which is what keeps
10,000 pods in a few tens of megabytes. An object missing a field the enricher relies
on raises :class:`OddObject`; the informer counts and skips it. An address that is not
an IP address is left out of the object and named in ``skipped`` (the informer counts
and logs it; the rest of the object is kept); every other address is kept in its
canonical text form (``ipaddress``: IPv6 compressed, lower case), the form flows look up.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowscope.core.errors import FlowscopeError

CONTAINER_ID_PREFIXES = ("containerd://", "docker://", "cri-o://", "crio://")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ELSEWHERE = "/"  # an endpoint's target that is no pod of the slice's namespace (never a name)
FINISHED_PHASES = ("Succeeded", "Failed")  # a pod that will not run again
# The container kubectl picks when none is named (logs, exec); service meshes set it on
# the pods they inject (a sidecar may come first in the spec: linkerd-proxy does).
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"

_intern = sys.intern


class OddObject(FlowscopeError):
    """A Kubernetes object lacks a field the enricher needs (it is skipped)."""

    def __init__(self, kind: str, problem: str) -> None:
        self.kind = kind
        self.problem = problem
        super().__init__(f"odd {kind} object: {problem}")


@dataclass(slots=True)
class OwnerRef:
    """The controlling owner of an object: kind, name (same namespace) and API group.

    The group tells a built-in controller from a custom resource of the same kind (a
    Volcano ``batch.volcano.sh`` Job, an OpenKruise ``apps.kruise.io`` StatefulSet).
    """

    kind: str
    name: str
    # its apiVersion's group ("" for the core group's "v1"); None when the reference has
    # no apiVersion (the API server requires one: only hand-made objects lack it)
    group: str | None


@dataclass(slots=True)
class Pod:
    """A pod: identity, where it runs, its addresses, containers and owner."""

    namespace: str
    name: str
    uid: str
    node: str
    host_network: bool
    ips: tuple[str, ...]
    # container names in spec order, but the default container (DEFAULT_CONTAINER's
    # annotation, when it names one of them) first: the one a flow without a socket
    # event naming its container is given
    containers: tuple[str, ...]
    container_ids: dict[str, str]  # runtime container id (no prefix) → container name
    labels: dict[str, str]  # only the allow-listed keys
    owner: OwnerRef | None
    # status.phase Succeeded or Failed: its containers ended for good and its addresses
    # may already be another pod's (the inventory lets them go, see Inventory)
    finished: bool = False
    # metadata.deletionTimestamp set: shutting down, its address likely released already
    # and given to a new pod (the inventory lets a live pod have it, see Inventory)
    terminating: bool = False
    deleted_at: float = 0.0  # monotonic time of deletion (0: alive)
    # monotonic time the inventory first saw it finished (0: not finished), kept across
    # its updates: its addresses resolve for the deleted grace after that at most
    finished_at: float = 0.0


@dataclass(slots=True)
class Service:
    """A Service and every address that reaches it from outside its pods."""

    namespace: str
    name: str
    ips: tuple[str, ...]  # ClusterIPs, externalIPs, load-balancer ingress IPs
    deleted_at: float = 0.0


@dataclass(slots=True)
class Node:
    """A node and its InternalIP / ExternalIP addresses."""

    name: str
    ips: tuple[str, ...]
    deleted_at: float = 0.0


@dataclass(slots=True)
class Workload:
    """A controller on a pod's owner chain (ReplicaSet, Deployment, Job, ...)."""

    kind: str
    namespace: str
    name: str
    owner: OwnerRef | None
    deleted_at: float = 0.0


@dataclass(slots=True)
class EndpointSlice:
    """The pod addresses a Service selects, from one EndpointSlice.

    An endpoint's address alone does not say whose it is: the apiserver's ``kubernetes``
    slice lists the control-plane nodes' addresses, a hostNetwork pod's endpoint lists its
    node's, a stale one an address since given to another pod. ``targets`` keeps, beside
    each address, the pod its endpoint's ``targetRef`` names (see :meth:`selects`). One
    address may have several endpoints: the EndpointSlice controller keys them by address
    and targetRef, so a terminating pod's endpoint and that of the new pod given its
    address are both listed; each (address, target) pair is kept once.
    """

    namespace: str
    name: str
    service: str
    addresses: tuple[str, ...]  # per endpoint address (an address repeats per target)
    # beside each of addresses: the name of the pod its endpoint's targetRef names in this
    # namespace; "" when the endpoint has no targetRef; ELSEWHERE when it names anything else
    targets: tuple[str, ...]
    deleted_at: float = 0.0

    def selects(self, pod: Pod, address: str) -> bool:
        """Whether an endpoint at ``address`` (one of :attr:`addresses`) is ``pod``'s: its
        targetRef names the pod; or it has none and the pod is in this namespace and not
        hostNetwork (a hostNetwork pod shares its address with its node and every other
        hostNetwork pod there, so only a targetRef can name it)."""
        if pod.namespace != self.namespace:
            return False
        at = -1
        for _ in range(self.addresses.count(address)):  # almost always once
            at = self.addresses.index(address, at + 1)
            target = self.targets[at]
            if target == pod.name if target else not pod.host_network:
                return True
        return False


def name_from_json(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """The namespace (defaulted as the converters do) and name an object's metadata gives,
    even when the rest of it does not convert; None when it names nothing."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    return str(meta.get("namespace") or "default"), meta["name"]


def _meta(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise OddObject(kind, "metadata.name missing")
    return meta


def _items(value: Any) -> list[Any]:
    """A JSON list field, or nothing when it is missing or not a list."""
    return value if isinstance(value, list) else []


def _object(value: Any) -> Mapping[str, Any]:
    """A JSON object field, or an empty one when it is missing or not an object."""
    return value if isinstance(value, Mapping) else {}


def _strings(values: Any) -> list[str]:
    return [v for v in values if isinstance(v, str) and v] if isinstance(values, list) else []


def _addresses(values: Iterable[str], field: str, skipped: list[str] | None) -> list[str]:
    """Address texts in canonical form; one that is no IP address is left out (named in
    ``skipped``), and so is a repeated one."""
    out: list[str] = []
    for value in values:
        try:
            address = str(ipaddress.ip_address(value))
        except ValueError:
            if skipped is not None:
                skipped.append(f"{field}: not an IP address: {value[:64]!r}")
            continue
        if address not in out:
            out.append(address)
    return out


def _owner(meta: Mapping[str, Any]) -> OwnerRef | None:
    """The controller owner reference (``controller: true``), else the first one."""
    refs = [r for r in _items(meta.get("ownerReferences")) if isinstance(r, Mapping)]
    refs = [r for r in refs if isinstance(r.get("kind"), str) and isinstance(r.get("name"), str)]
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller")), refs[0])
    api = ref.get("apiVersion")
    group = _intern(api.rpartition("/")[0]) if isinstance(api, str) and api else None
    return OwnerRef(_intern(ref["kind"]), ref["name"], group)


def strip_container_id(raw: str) -> str:
    """``containerd://abc…`` → ``abc…`` (the id socket events carry)."""
    for prefix in CONTAINER_ID_PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix) :]
    return raw


def pod_from_json(
    obj: Mapping[str, Any], label_keys: tuple[str, ...], skipped: list[str] | None = None
) -> Pod:
    meta = _meta(obj, "Pod")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise OddObject("Pod", "spec/status is not an object")
    ips = _strings([p.get("ip") for p in _items(status.get("podIPs")) if isinstance(p, Mapping)])
    if not ips and isinstance(status.get("podIP"), str) and status["podIP"]:
        ips = [status["podIP"]]
    ips = _addresses(ips, "status.podIPs", skipped)
    containers = tuple(
        _intern(c["name"])
        for c in _items(spec.get("containers"))
        if isinstance(c, Mapping) and isinstance(c.get("name"), str)
    )
    default = _object(meta.get("annotations")).get(DEFAULT_CONTAINER)
    if default in containers[1:]:
        at = containers.index(default)
        containers = (containers[at], *containers[:at], *containers[at + 1 :])
    ids: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in _items(status.get(key)):
            if isinstance(cs, Mapping) and isinstance(cs.get("containerID"), str):
                ids[strip_container_id(cs["containerID"])] = _intern(str(cs.get("name", "")))
    labels = _object(meta.get("labels"))
    return Pod(
        namespace=_intern(str(meta.get("namespace") or "default")),
        name=_intern(meta["name"]),  # shared with the EndpointSlices' targets
        uid=str(meta.get("uid") or ""),
        node=_intern(str(spec.get("nodeName") or "")),
        host_network=bool(spec.get("hostNetwork")),
        ips=tuple(ips),
        containers=containers,
        container_ids=ids,
        labels={
            k: str(labels[k]) for k in label_keys if isinstance(labels, Mapping) and k in labels
        },
        owner=_owner(meta),
        finished=status.get("phase") in FINISHED_PHASES,
        terminating=bool(meta.get("deletionTimestamp")),
    )


def service_from_json(obj: Mapping[str, Any], skipped: list[str] | None = None) -> Service:
    meta = _meta(obj, "Service")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        raise OddObject("Service", "spec/status is not an object")
    cluster = _strings(spec.get("clusterIPs")) or _strings([spec.get("clusterIP")])
    cluster = [ip for ip in cluster if ip != "None"]  # headless services have no virtual IP
    ingress = _items(_object(status.get("loadBalancer")).get("ingress"))
    ips = (
        _addresses(cluster, "spec.clusterIPs", skipped)
        + _addresses(_strings(spec.get("externalIPs")), "spec.externalIPs", skipped)
        + _addresses(
            _strings([i.get("ip") for i in ingress if isinstance(i, Mapping)]),
            "status.loadBalancer.ingress",
            skipped,
        )
    )
    namespace = _intern(str(meta.get("namespace") or "default"))
    return Service(namespace, meta["name"], tuple(dict.fromkeys(ips)))


def node_from_json(obj: Mapping[str, Any], skipped: list[str] | None = None) -> Node:
    meta = _meta(obj, "Node")
    addresses = _items(_object(obj.get("status")).get("addresses"))
    ips = _strings(
        [
            a.get("address")
            for a in addresses
            if isinstance(a, Mapping) and a.get("type") in ("InternalIP", "ExternalIP")
        ]
    )
    return Node(_intern(meta["name"]), tuple(_addresses(ips, "status.addresses", skipped)))


def workload_from_json(kind: str) -> Callable[..., Workload]:
    """The converter for one controller kind (the list's items may lack ``kind``)."""

    def convert(obj: Mapping[str, Any], skipped: list[str] | None = None) -> Workload:
        meta = _meta(obj, kind)
        namespace = _intern(str(meta.get("namespace") or "default"))
        return Workload(kind, namespace, meta["name"], _owner(meta))

    return convert


def endpointslice_from_json(
    obj: Mapping[str, Any], skipped: list[str] | None = None
) -> EndpointSlice:
    meta = _meta(obj, "EndpointSlice")
    service = _object(meta.get("labels")).get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        raise OddObject("EndpointSlice", f"label {SERVICE_NAME_LABEL} missing")
    namespace = _intern(str(meta.get("namespace") or "default"))
    endpoints: dict[tuple[str, str], None] = {}  # (address, its endpoint's target), once
    # An FQDN slice (addressType FQDN) lists names, not addresses: nothing to index.
    if obj.get("addressType") != "FQDN":
        for ep in _items(obj.get("endpoints")):
            if isinstance(ep, Mapping):
                target = _target(ep.get("targetRef"), namespace)
                for address in _addresses(
                    _strings(ep.get("addresses")), "endpoints.addresses", skipped
                ):
                    endpoints[address, target] = None
    addresses = tuple(address for address, _ in endpoints)
    targets = tuple(target for _, target in endpoints)
    return EndpointSlice(namespace, meta["name"], service, addresses, targets)


def _target(ref: Any, namespace: str) -> str:
    """An endpoint's target (EndpointSlice.targets): interned, as a pod's name is held
    once by the pod and once by each slice listing it."""
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref["name"]:
        return ""  # names nothing: as if absent
    if ref.get("kind") != "Pod" or (ref.get("namespace") or namespace) != namespace:
        return ELSEWHERE
    return _intern(ref["name"])
