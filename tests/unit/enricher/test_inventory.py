"""The inventory resolves addresses to pods, services, nodes; deleted objects linger."""

from __future__ import annotations

from flowscope.enricher import objects
from flowscope.enricher.inventory import Inventory

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock

LABELS = ("app",)


def make(clock: Clock | None = None) -> Inventory:
    inv = Inventory(deleted_grace=60, clock=clock or Clock())
    wl = objects.workload_from_json
    inv.upsert("replicasets", wl("ReplicaSet")(cluster.workload("ReplicaSet", "web-5d",
                                                                 owner=("Deployment", "web"))))  # fmt: skip
    inv.upsert("deployments", wl("Deployment")(cluster.workload("Deployment", "web")))
    inv.upsert(
        "jobs", wl("Job")(cluster.workload("Job", "nightly-1", owner=("CronJob", "nightly")))
    )
    inv.upsert("cronjobs", wl("CronJob")(cluster.workload("CronJob", "nightly")))
    return inv


def add_pod(inv: Inventory, **kw: object) -> None:
    inv.upsert("pods", objects.pod_from_json(cluster.pod(**kw), LABELS))  # type: ignore[arg-type]


def test_pod_with_full_owner_chain_labels_and_service() -> None:
    inv = make()
    add_pod(inv, name="web-5d-x", owner=("ReplicaSet", "web-5d"), labels={"app": "web"})
    inv.upsert("endpointslices", objects.endpointslice_from_json(
        cluster.endpointslice("web-a", "web", ("10.1.0.5",))))  # fmt: skip
    ident = inv.resolve("10.1.0.5")
    assert (ident.kind, ident.token, ident.home) == ("pod", "shop", "node-1")
    assert ident.source == {
        "source.address": "10.1.0.5", "source.kind": "pod",
        "source.k8s.namespace.name": "shop", "source.k8s.pod.name": "web-5d-x",
        "source.k8s.pod.uid": "uid-shop-web-5d-x", "source.k8s.container.name": "main",
        "source.k8s.node.name": "node-1", "source.k8s.replicaset.name": "web-5d",
        "source.k8s.deployment.name": "web", "source.k8s.workload.kind": "Deployment",
        "source.k8s.workload.name": "web", "source.k8s.service.name": "web",
        "source.k8s.pod.labels.app": "web",
    }  # fmt: skip
    assert ident.destination["destination.k8s.pod.name"] == "web-5d-x"


def test_cronjob_chain_and_bare_pod() -> None:
    inv = make()
    add_pod(inv, name="nightly-1-abc", ips=("10.1.0.6",), owner=("Job", "nightly-1"))
    add_pod(inv, name="debug", ips=("10.1.0.7",))
    job = inv.resolve("10.1.0.6").source
    assert job["source.k8s.job.name"] == "nightly-1"
    assert job["source.k8s.cronjob.name"] == "nightly"
    assert (job["source.k8s.workload.kind"], job["source.k8s.workload.name"]) == (
        "CronJob",
        "nightly",
    )
    bare = inv.resolve("10.1.0.7").source
    assert (bare["source.k8s.workload.kind"], bare["source.k8s.workload.name"]) == ("Pod", "debug")


def test_statefulset_owner_unknown_object_still_named() -> None:
    inv = make()
    add_pod(inv, name="db-0", ips=("10.1.0.8",), owner=("StatefulSet", "db"))
    src = inv.resolve("10.1.0.8").source
    assert src["source.k8s.statefulset.name"] == "db"
    assert src["source.k8s.workload.kind"] == "StatefulSet"


def test_service_node_external_and_ipv6() -> None:
    inv = make()
    inv.upsert("services", objects.service_from_json(
        cluster.service("db", namespace="data", cluster_ips=("10.96.0.10", "fd00::10"))))  # fmt: skip
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-2", "192.168.0.2")))
    add_pod(inv, name="v6", ips=("fd00:1::5",))
    svc = inv.resolve("fd00::10")
    assert (svc.kind, svc.token, svc.destination["destination.k8s.service.name"]) == (
        "service", "data", "db")  # fmt: skip
    node = inv.resolve("192.168.0.2")
    assert (node.kind, node.token, node.home) == ("node", "_node", "node-2")
    assert inv.resolve("fd00:1::5").kind == "pod"
    ext = inv.resolve("8.8.8.8")
    assert (ext.kind, ext.token, ext.source) == (
        "external", "_external", {"source.address": "8.8.8.8", "source.kind": "external"})  # fmt: skip


def test_host_network_pod_resolves_to_node_but_container_id_to_pod() -> None:
    inv = make()
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-1", "192.168.0.1")))
    add_pod(inv, name="agent", ips=("192.168.0.1",), host_network=True,
            container_ids={"c0ffee": "main"})  # fmt: skip
    assert inv.resolve("192.168.0.1").kind == "node"
    refined = inv.by_container("c0ffee")
    assert refined is not None and refined.kind == "pod" and refined.home == "node-1"
    assert refined.source["source.k8s.pod.name"] == "agent"
    assert inv.by_container("unknown") is None


def test_deleted_pod_resolvable_for_grace_then_gone() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="short", ips=("10.1.0.9",))
    inv.delete("pods", ("shop", "short"))
    clock.now += 59
    inv.sweep()
    assert inv.resolve("10.1.0.9").source["source.k8s.pod.name"] == "short"
    clock.now += 2
    assert inv.sweep() == 1
    assert inv.resolve("10.1.0.9").kind == "external"


def test_new_pod_claims_address_of_deleted_pod_and_sweep_keeps_it() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="old", ips=("10.1.0.9",))
    inv.delete("pods", ("shop", "old"))
    add_pod(inv, name="new", ips=("10.1.0.9",))
    assert inv.resolve("10.1.0.9").source["source.k8s.pod.name"] == "new"
    clock.now += 120
    inv.sweep()
    assert inv.resolve("10.1.0.9").source["source.k8s.pod.name"] == "new"


def test_replace_deletes_missing_objects_with_grace() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="a", ips=("10.1.0.1",))
    add_pod(inv, name="b", ips=("10.1.0.2",))
    inv.replace("pods", [objects.pod_from_json(cluster.pod("a", ips=("10.1.0.1",)), LABELS)])
    assert inv.resolve("10.1.0.2").kind == "pod"  # still in its grace period
    clock.now += 61
    inv.sweep()
    assert inv.resolve("10.1.0.2").kind == "external"
    assert inv.resolve("10.1.0.1").kind == "pod"


def test_modified_pod_moves_address_and_cache_follows() -> None:
    inv = make()
    add_pod(inv, name="a", ips=("10.1.0.1",), labels={"app": "v1"})
    assert inv.resolve("10.1.0.1").source["source.k8s.pod.labels.app"] == "v1"
    add_pod(inv, name="a", ips=("10.1.0.3",), labels={"app": "v2"})
    assert inv.resolve("10.1.0.1").kind == "external"
    assert inv.resolve("10.1.0.3").source["source.k8s.pod.labels.app"] == "v2"


def test_ready_only_after_every_expected_resource_synced() -> None:
    inv = make()
    inv.expected |= {"pods", "nodes"}
    inv.mark_synced("pods")
    assert not inv.ready
    inv.mark_synced("nodes")
    assert inv.ready and inv.became_ready.is_set()
