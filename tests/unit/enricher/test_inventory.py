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
    raw = cluster.pod(**kw)  # type: ignore[arg-type]
    for ref in raw["metadata"].get("ownerReferences", ()):
        if ref["kind"] in ("Job", "CronJob"):  # cluster.pod says apps/v1 for every kind
            ref["apiVersion"] = "batch/v1"
    inv.upsert("pods", objects.pod_from_json(raw, LABELS))


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


# ---------------------------------------------------------------- re-created under a name


def test_recreated_statefulset_pod_leaves_old_address_and_containers_their_grace() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="web-0", ips=("10.1.0.5",), uid="old", owner=("StatefulSet", "web"),
            container_ids={"c-old": "main"})  # fmt: skip
    inv.delete("pods", ("shop", "web-0"))
    clock.now += 1
    add_pod(inv, name="web-0", ips=("10.1.0.9",), uid="new", owner=("StatefulSet", "web"),
            container_ids={"c-new": "main"})  # fmt: skip
    old, new = inv.resolve("10.1.0.5"), inv.resolve("10.1.0.9")
    assert old.kind == "pod" and old.source["source.k8s.pod.uid"] == "old"
    assert new.source["source.k8s.pod.uid"] == "new"
    old_container = inv.by_container("c-old")
    assert old_container is not None and old_container.source["source.k8s.pod.uid"] == "old"
    clock.now += 58  # the old pod's grace (60 s from its delete) is not over yet
    inv.sweep()
    assert inv.resolve("10.1.0.5").source["source.k8s.pod.uid"] == "old"
    clock.now += 2
    assert inv.sweep() == 1
    assert inv.resolve("10.1.0.5").kind == "external" and inv.by_container("c-old") is None
    assert inv.resolve("10.1.0.9").source["source.k8s.pod.uid"] == "new"
    assert inv.by_container("c-new") is not None and inv.count("pods") == 1
    assert not inv._graveyard  # nothing of the old pod is kept past its grace


def test_recreated_pod_claims_what_it_shares_with_the_deleted_one() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="web-0", ips=("10.1.0.5", "fd00::5"), uid="old",
            container_ids={"c-old": "main", "c-both": "main"})  # fmt: skip
    inv.delete("pods", ("shop", "web-0"))
    add_pod(inv, name="web-0", ips=("10.1.0.5",), uid="new", container_ids={"c-both": "main"})
    assert inv.resolve("10.1.0.5").source["source.k8s.pod.uid"] == "new"
    assert inv.by_container("c-both").source["source.k8s.pod.uid"] == "new"  # type: ignore[union-attr]
    assert inv.resolve("fd00::5").source["source.k8s.pod.uid"] == "old"
    clock.now += 61
    inv.sweep()
    assert inv.resolve("10.1.0.5").source["source.k8s.pod.uid"] == "new"
    assert inv.by_container("c-both").source["source.k8s.pod.uid"] == "new"  # type: ignore[union-attr]
    assert inv.resolve("fd00::5").kind == "external"


def test_pod_replaced_by_another_uid_in_a_relist_gets_the_deleted_grace() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="web-0", ips=("10.1.0.5",), uid="old", container_ids={"c-old": "main"})
    # The watch was away while web-0 was deleted and re-created: no DELETED event.
    new = objects.pod_from_json(cluster.pod("web-0", ips=("10.1.0.9",), uid="new"), LABELS)
    inv.replace("pods", [new])
    assert inv.resolve("10.1.0.5").source["source.k8s.pod.uid"] == "old"
    assert inv.by_container("c-old") is not None
    clock.now += 61
    inv.sweep()
    assert inv.resolve("10.1.0.5").kind == "external" and inv.by_container("c-old") is None
    assert inv.resolve("10.1.0.9").source["source.k8s.pod.uid"] == "new"


def test_recreated_service_leaves_old_cluster_ip_its_grace() -> None:
    clock = Clock()
    inv = make(clock)
    convert = objects.service_from_json
    inv.upsert("services", convert(cluster.service("api", cluster_ips=("10.96.0.10",))))
    inv.delete("services", ("shop", "api"))
    inv.upsert("services", convert(cluster.service("api", cluster_ips=("10.96.0.77",))))
    assert inv.resolve("10.96.0.10").kind == "service"
    assert inv.resolve("10.96.0.77").kind == "service"
    clock.now += 61
    inv.sweep()
    assert inv.resolve("10.96.0.10").kind == "external"
    assert inv.resolve("10.96.0.77").source["source.k8s.service.name"] == "api"


def test_recreated_endpointslice_leaves_old_addresses_their_grace() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="a", ips=("10.1.0.1",))
    add_pod(inv, name="b", ips=("10.1.0.2",))
    convert = objects.endpointslice_from_json
    inv.upsert("endpointslices", convert(cluster.endpointslice("web-x", "web", ("10.1.0.1",))))
    inv.delete("endpointslices", ("shop", "web-x"))
    inv.upsert("endpointslices", convert(cluster.endpointslice("web-x", "web", ("10.1.0.2",))))
    assert inv.resolve("10.1.0.1").source["source.k8s.service.name"] == "web"
    clock.now += 61
    inv.sweep()
    assert "source.k8s.service.name" not in inv.resolve("10.1.0.1").source
    assert inv.resolve("10.1.0.2").source["source.k8s.service.name"] == "web"


# ---------------------------------------------------------------- finished pods


def add_finished(inv: Inventory, phase: str = "Succeeded", **kw: object) -> None:
    raw = cluster.pod(**kw)  # type: ignore[arg-type]
    raw["status"]["phase"] = phase
    inv.upsert("pods", objects.pod_from_json(raw, LABELS))


def test_finished_pod_never_takes_the_address_of_a_running_pod() -> None:
    inv = make()
    add_pod(inv, name="job-abc", ips=("10.1.0.7",), uid="u-old")
    add_finished(inv, name="job-abc", ips=("10.1.0.7",), uid="u-old")
    add_pod(inv, name="web-1", ips=("10.1.0.7",), uid="u-new")  # the freed address reused
    assert inv.resolve("10.1.0.7").source["source.k8s.pod.name"] == "web-1"
    add_finished(inv, phase="Failed", name="job-abc", ips=("10.1.0.7",), uid="u-old")  # MODIFIED
    assert inv.resolve("10.1.0.7").source["source.k8s.pod.name"] == "web-1"


def test_finished_pod_holds_a_free_address_for_the_grace_only() -> None:
    clock = Clock()
    inv = make(clock)
    add_pod(inv, name="job-abc", ips=("10.1.0.7",), container_ids={"c-job": "main"})
    clock.now += 5
    add_finished(inv, name="job-abc", ips=("10.1.0.7",), container_ids={"c-job": "main"})
    clock.now += 50
    add_finished(inv, name="job-abc", ips=("10.1.0.7",), container_ids={"c-job": "main"})
    inv.sweep()
    assert inv.resolve("10.1.0.7").source["source.k8s.pod.name"] == "job-abc"  # its last flows
    clock.now += 11  # 61 s after it was first seen finished
    inv.sweep()
    assert inv.resolve("10.1.0.7").kind == "external"
    # Its later updates (the Job controller removing its finalizer) leave it so.
    add_finished(inv, name="job-abc", ips=("10.1.0.7",), container_ids={"c-job": "main"})
    assert inv.resolve("10.1.0.7").kind == "external"
    assert inv.by_container("c-job") is not None  # the pod is still there: its containers too
    inv.delete("pods", ("shop", "job-abc"))
    clock.now += 61
    assert inv.sweep() == 1 and inv.by_container("c-job") is None


def test_pod_first_seen_finished_takes_no_running_pods_address() -> None:
    inv = make()
    add_pod(inv, name="web-1", ips=("10.1.0.7",))
    add_finished(inv, name="old-job", ips=("10.1.0.7",))  # as a first LIST may list them
    assert inv.resolve("10.1.0.7").source["source.k8s.pod.name"] == "web-1"


# ---------------------------------------------------------------- workload kinds


def test_static_pod_owned_by_its_node_is_its_own_workload() -> None:
    inv = make()
    raw = cluster.pod("kube-apiserver-cp1", "kube-system", ips=("10.1.0.20",))
    raw["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": "cp1", "controller": True, "uid": "n"}
    ]
    inv.upsert("pods", objects.pod_from_json(raw, LABELS))
    src = inv.resolve("10.1.0.20").source
    assert (src["source.k8s.workload.kind"], src["source.k8s.workload.name"]) == (
        "Pod", "kube-apiserver-cp1")  # fmt: skip


def test_chain_stops_below_owners_that_are_not_workloads() -> None:
    inv = make()
    wl = objects.workload_from_json
    # An Argo Rollout owns this ReplicaSet; a Deployment cannot own a StatefulSet.
    inv.upsert("replicasets", wl("ReplicaSet")(
        cluster.workload("ReplicaSet", "canary-7f", owner=("Rollout", "canary"))))  # fmt: skip
    inv.upsert("replicasets", wl("ReplicaSet")(cluster.workload("ReplicaSet", "bare-rs")))
    inv.upsert("jobs", wl("Job")(cluster.workload("Job", "once")))
    inv.upsert("statefulsets", wl("StatefulSet")(
        cluster.workload("StatefulSet", "db", owner=("Deployment", "web"))))  # fmt: skip
    cases = {
        "10.1.0.30": (("ReplicaSet", "canary-7f"), ("ReplicaSet", "canary-7f")),
        "10.1.0.31": (("ReplicaSet", "bare-rs"), ("ReplicaSet", "bare-rs")),
        "10.1.0.32": (("Job", "once"), ("Job", "once")),
        "10.1.0.33": (("StatefulSet", "db"), ("StatefulSet", "db")),
        "10.1.0.34": (("Job", "nightly-1"), ("CronJob", "nightly")),
    }
    for n, (ip, (owner, _)) in enumerate(cases.items()):
        add_pod(inv, name=f"p{n}", ips=(ip,), owner=owner)
    for ip, (_, top) in cases.items():
        src = inv.resolve(ip).source
        assert (src["source.k8s.workload.kind"], src["source.k8s.workload.name"]) == top, ip
        assert "source.k8s.deployment.name" not in src
    assert inv.resolve("10.1.0.34").source["source.k8s.job.name"] == "nightly-1"


# ---------------------------------------------------------------- address spellings


def test_addresses_from_objects_resolve_in_canonical_form() -> None:
    inv = make()
    inv.upsert("nodes", objects.node_from_json(cluster.node("n1", "FD00:0:0:0::A")))
    inv.upsert("services", objects.service_from_json(cluster.service(
        "lb", cluster_ips=("FD00:96:0::10",), external_ips=("2001:DB8::1",),
        lb_ips=("2001:db8:0:0:0:0:0:2",))))  # fmt: skip
    add_pod(inv, name="p", ips=("10.1.0.1", "fd00:10:244:0:0:0:0:5"))
    inv.upsert("endpointslices", objects.endpointslice_from_json(
        cluster.endpointslice("lb-x", "lb", ("FD00:10:244::5",))))  # fmt: skip
    assert inv.resolve("fd00::a").kind == "node"
    assert [inv.resolve(a).kind for a in ("fd00:96::10", "2001:db8::1", "2001:db8::2")] == [
        "service"] * 3  # fmt: skip
    pod = inv.resolve("fd00:10:244::5")
    assert pod.kind == "pod" and pod.source["source.k8s.service.name"] == "lb"
