"""Which object an address is, when several claim it; and whose owner a pod's is.

Regression tests for four lookups that named the wrong object: a new pod given its
address while the old pod's endpoint still listed it lost its Service (the slice kept one
endpoint per address); a finished pod's update took its address back from the newer pod
deleted just before; a deleted pod or node outranked the live node or Service now holding
its address; a custom resource's pod (a Volcano Job) was taken for the built-in kind's.
The address claims are checked through the enricher's native flow path too: the compiled
core keeps identities beside its address table, and must not outlive the change.
"""

from __future__ import annotations

from typing import Any

import orjson
from flowscope.core import codec
from flowscope.enricher import objects
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import flow

X, CLIENT = "10.1.0.40", "10.1.0.2"
CONVERT = {
    "nodes": objects.node_from_json, "services": objects.service_from_json,
    "endpointslices": objects.endpointslice_from_json,
    "pods": lambda raw: objects.pod_from_json(raw, ()),
    "jobs": objects.workload_from_json("Job"),
}  # fmt: skip


class World:
    """An inventory and a native enricher over it; :meth:`name_of` reads a flow to an
    address as the pipeline enriches a raw message, after the warming task's work."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.inv = Inventory(60, clock=self.clock)
        self.inv.mark_synced("all")
        self.enricher = Enricher(
            self.inv, SocketTable(100, 30, self.clock), NameCache(60, 3600, 100, self.clock),
            Observers(300, self.clock), self.clock, native=True,
        )  # fmt: skip
        assert self.enricher.native
        self.upsert("pods", cluster.pod("client", ips=(CLIENT,)))

    def upsert(self, resource: str, raw: dict[str, Any]) -> None:
        self.inv.upsert(resource, CONVERT[resource](raw))

    def delete(self, resource: str, namespace: str, name: str) -> None:
        self.inv.delete(resource, (namespace, name))

    def name_of(self) -> tuple[str, str | None]:
        """The destination's kind and pod, node or Service name in a flow to X."""
        self.enricher.learn_addresses(self.inv.warm(100))
        message = codec.encode(codec.RAW_FLOW, [flow("node-1", CLIENT, X, 40000, 80)])
        out = self.enricher.flow_batch(message.headers, message.body)
        assert out.rendered is not None  # the compiled core read the body itself
        ((line,),) = out.lines.values()
        rec = orjson.loads(line)
        kind = rec["destination.kind"]
        key = {"pod": "k8s.pod.name", "node": "k8s.node.name"}.get(kind, "k8s.service.name")
        return kind, rec.get(f"destination.{key}")


def terminating(raw: dict[str, Any], at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    raw["metadata"]["deletionTimestamp"] = at
    return raw


def finished(raw: dict[str, Any]) -> dict[str, Any]:
    raw["status"]["phase"] = "Succeeded"
    return raw


# ---------------------------------------------------------------- one address, two endpoints


def reused_address_slice() -> dict[str, Any]:
    """The old pod's terminating endpoint, then the new pod's at the same address (the
    EndpointSlice controller keys endpoints by address and targetRef)."""
    raw = cluster.endpointslice("web-abc", "web", (X, X), pods=("web-old", "web-new"))
    raw["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    return raw


def test_slice_keeps_every_endpoint_at_an_address() -> None:
    s = objects.endpointslice_from_json(reused_address_slice())
    assert list(zip(s.addresses, s.targets, strict=True)) == [(X, "web-old"), (X, "web-new")]


def test_new_pod_at_an_address_its_old_endpoint_still_lists_gets_its_service() -> None:
    w = World()
    w.upsert("pods", terminating(cluster.pod("web-old", ips=(X,))))
    w.upsert("pods", cluster.pod("web-new", ips=(X,)))
    w.upsert("endpointslices", reused_address_slice())
    ident = w.inv.resolve(X)
    assert (ident.meta["k8s.pod.name"], ident.meta.get("k8s.service.name")) == ("web-new", "web")


# ---------------------------------------------------------------- a pod not running


def test_finished_pods_update_does_not_take_the_address_back_from_a_newer_deleted_pod() -> None:
    w = World()
    job = finished(cluster.pod("job-a-xyz", ips=(X,), owner=("Job", "job-a")))
    w.upsert("pods", job)
    web = cluster.pod("web-123", ips=(X,), owner=("ReplicaSet", "web-5d9"))
    w.upsert("pods", web)
    assert w.name_of() == ("pod", "web-123")
    w.upsert("pods", terminating(web))
    w.delete("pods", "shop", "web-123")
    assert w.name_of() == ("pod", "web-123")  # its last flows, in its grace
    w.upsert("pods", terminating(job, "2026-01-01T00:00:30Z"))  # Job TTL: deletion begins
    assert w.name_of() == ("pod", "web-123")
    w.delete("pods", "shop", "job-a-xyz")
    assert w.name_of() == ("pod", "web-123")


def test_pod_not_running_takes_only_a_free_address() -> None:
    w = World()
    w.upsert("pods", cluster.pod("a", ips=(X,)))
    w.delete("pods", "shop", "a")
    w.upsert("pods", terminating(cluster.pod("b", ips=(X,))))  # first seen shutting down
    assert w.name_of() == ("pod", "a")
    w.clock.now += 61
    w.inv.sweep()
    w.upsert("pods", terminating(cluster.pod("b", ips=(X,), labels={"app": "x"})))
    assert w.name_of() == ("pod", "b")  # free now


# ---------------------------------------------------------------- live objects first


def test_live_node_outranks_a_deleted_pod_that_held_its_address() -> None:
    w = World()
    w.upsert("pods", cluster.pod("batch-1", ips=(X,)))
    assert w.name_of() == ("pod", "batch-1")
    w.delete("pods", "shop", "batch-1")
    w.upsert("nodes", cluster.node("ip-10-1-0-40", X))  # pods and nodes share the subnet
    assert w.name_of() == ("node", "ip-10-1-0-40")
    assert w.inv.other_addresses(X) == ()  # no pod's


def test_deleting_the_pod_hands_the_address_to_the_live_node() -> None:
    w = World()
    w.upsert("nodes", cluster.node("ip-10-1-0-40", X))
    w.upsert("pods", cluster.pod("batch-1", ips=(X, "fd00::40")))
    assert w.name_of() == ("pod", "batch-1")  # among live ones, the pod
    assert w.inv.other_addresses("fd00::40") == (X,)
    w.delete("pods", "shop", "batch-1")
    assert w.name_of() == ("node", "ip-10-1-0-40")
    assert w.inv.other_addresses("fd00::40") == ()
    v6 = w.inv.resolve("fd00::40")  # nobody else's: the pod's, in its grace
    assert (v6.kind, v6.meta["k8s.pod.name"]) == ("pod", "batch-1")


def test_live_node_outranks_a_finished_pod_first_seen_with_its_address() -> None:
    w = World()
    w.upsert("nodes", cluster.node("ip-10-1-0-40", X))
    w.upsert("pods", finished(cluster.pod("old-job", ips=(X,))))  # as a first LIST has it
    assert w.name_of() == ("node", "ip-10-1-0-40")


def test_live_service_outranks_a_deleted_node() -> None:
    w = World()
    w.upsert("nodes", cluster.node("old-node", X))
    assert w.name_of() == ("node", "old-node")
    w.upsert("services", cluster.service("ingress", cluster_ips=("10.96.0.50",), lb_ips=(X,)))
    assert w.name_of() == ("node", "old-node")  # a node's address, though an LB IP too
    w.delete("nodes", "", "old-node")
    assert w.name_of() == ("service", "ingress")
    w.clock.now += 61
    w.inv.sweep()
    assert w.name_of() == ("service", "ingress")


def test_deleted_objects_keep_the_kind_order_among_themselves() -> None:
    w = World()
    w.upsert("services", cluster.service("gone", cluster_ips=("10.96.0.50",), lb_ips=(X,)))
    w.upsert("pods", cluster.pod("p", ips=(X,)))
    w.delete("services", "shop", "gone")
    w.delete("pods", "shop", "p")
    assert w.name_of() == ("pod", "p")


# ---------------------------------------------------------------- owners by API group


def owned(name: str, ip: str, api_version: str, kind: str, owner: str) -> dict[str, Any]:
    raw = cluster.pod(name, ips=(ip,))
    raw["metadata"]["ownerReferences"] = [
        {"apiVersion": api_version, "kind": kind, "name": owner, "uid": "o", "controller": True}
    ]
    return raw


def workload_keys(inv: Inventory, ip: str) -> dict[str, Any]:
    meta = inv.resolve(ip).meta
    return {k: v for k, v in meta.items() if k.startswith("k8s.") and k.split(".")[1] in (
        "workload", "job", "cronjob", "statefulset", "replicaset", "deployment")}  # fmt: skip


def test_owner_reference_keeps_its_api_group() -> None:
    raw = owned("p", X, "batch.volcano.sh/v1alpha1", "Job", "train")
    assert objects.pod_from_json(raw, ()).owner == objects.OwnerRef(
        "Job", "train", "batch.volcano.sh")  # fmt: skip
    core = owned("p", X, "v1", "Node", "cp1")
    assert objects.pod_from_json(core, ()).owner == objects.OwnerRef("Node", "cp1", "")


def test_custom_resource_of_a_workload_kind_is_no_workload() -> None:
    w = World()
    w.upsert("jobs", cluster.workload("Job", "train", owner=("CronJob", "nightly")))
    w.upsert("pods", owned("train-worker-0", X, "batch.volcano.sh/v1alpha1", "Job", "train"))
    w.upsert("pods", owned("web-0", "10.1.0.41", "apps.kruise.io/v1beta1", "StatefulSet", "web"))
    assert workload_keys(w.inv, X) == {
        "k8s.workload.kind": "Pod", "k8s.workload.name": "train-worker-0"}  # fmt: skip
    assert workload_keys(w.inv, "10.1.0.41") == {
        "k8s.workload.kind": "Pod", "k8s.workload.name": "web-0"}  # fmt: skip


def test_built_in_workload_chain_follows_api_groups() -> None:
    w = World()
    job = cluster.workload("Job", "nightly-1")
    job["metadata"]["ownerReferences"] = [
        {"apiVersion": "example.com/v1", "kind": "CronJob", "name": "nightly", "controller": True}
    ]
    w.upsert("jobs", job)
    w.upsert("pods", owned("nightly-1-x", X, "batch/v1", "Job", "nightly-1"))
    assert workload_keys(w.inv, X) == {
        "k8s.job.name": "nightly-1",
        "k8s.workload.kind": "Job",
        "k8s.workload.name": "nightly-1",
    }
    # The Job's owner becomes the batch CronJob: the pod's identity follows.
    job["metadata"]["ownerReferences"][0]["apiVersion"] = "batch/v1"
    w.upsert("jobs", job)
    assert workload_keys(w.inv, X)["k8s.workload.kind"] == "CronJob"
    # A ReplicaSet created through the pre-1.16 extensions group is still one.
    w.upsert("pods", owned("old-rs-x", "10.1.0.41", "extensions/v1beta1", "ReplicaSet", "old-rs"))
    assert workload_keys(w.inv, "10.1.0.41")["k8s.workload.kind"] == "ReplicaSet"
