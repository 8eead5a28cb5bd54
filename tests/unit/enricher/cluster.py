"""Kubernetes objects as the API serves them (JSON), for unit and integration tests."""

from __future__ import annotations

from typing import Any


class Clock:
    """A settable monotonic clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pod(
    name: str,
    namespace: str = "shop",
    ips: tuple[str, ...] = ("10.1.0.5",),
    node: str = "node-1",
    owner: tuple[str, str] | None = None,
    containers: tuple[str, ...] = ("main",),
    container_ids: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    host_network: bool = False,
    uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name, "namespace": namespace, "uid": uid or f"uid-{namespace}-{name}",
        "labels": labels or {},
    }  # fmt: skip
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "x",
             "controller": True},
        ]  # fmt: skip
    statuses = [
        {"name": c, "containerID": f"containerd://{cid}", "ready": True}
        for cid, c in (container_ids or {}).items()
    ]
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": c, "image": "img"} for c in containers]},
        "status": {"phase": "Running", "podIP": ips[0] if ips else "",
                   "podIPs": [{"ip": ip} for ip in ips], "containerStatuses": statuses},
    }  # fmt: skip


def workload(kind: str, name: str, namespace: str = "shop",
             owner: tuple[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {"kind": kind, "apiVersion": api, "metadata": meta, "spec": {}}


def service(name: str, namespace: str = "shop", cluster_ips: tuple[str, ...] = ("10.96.0.10",),
            external_ips: tuple[str, ...] = (), lb_ips: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    return {
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-svc-{name}"},
        "spec": {"clusterIP": cluster_ips[0] if cluster_ips else "None",
                 "clusterIPs": list(cluster_ips), "externalIPs": list(external_ips)},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}},
    }  # fmt: skip


def endpointslice(name: str, service_name: str, addresses: tuple[str, ...],
                  namespace: str = "shop", pods: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """A slice whose i-th endpoint's targetRef names pod ``pods[i]`` (in ``namespace``);
    past the end of ``pods``, a targetRef that names no pod (as if it had none)."""
    refs = [{"kind": "Pod", "namespace": namespace, "name": p} for p in pods]
    refs += [{"kind": "Pod"} for _ in addresses[len(pods) :]]
    return {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "targetRef": ref}
                      for a, ref in zip(addresses, refs, strict=False)],
        "ports": [{"port": 80, "protocol": "TCP"}],
    }  # fmt: skip


def node(name: str, internal: str, external: str | None = None) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": internal}, {"type": "Hostname", "address": name}]
    if external:
        addresses.append({"type": "ExternalIP", "address": external})
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "uid": f"uid-{name}"},
            "status": {"addresses": addresses}}  # fmt: skip
