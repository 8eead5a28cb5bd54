"""Kubernetes JSON → slim objects: only the needed fields, odd objects rejected."""

from __future__ import annotations

import pytest
from flowscope.enricher import objects
from flowscope.enricher.objects import OddObject

from tests.unit.enricher import cluster


def test_pod_keeps_addresses_containers_owner_and_allowed_labels() -> None:
    raw = cluster.pod(
        "web-1", ips=("10.1.0.5", "fd00::5"), owner=("ReplicaSet", "web-5d"),
        containers=("main", "sidecar"), container_ids={"abc": "sidecar"},
        labels={"app": "web", "secret-ish": "x"},
    )  # fmt: skip
    pod = objects.pod_from_json(raw, ("app", "version"))
    assert pod.ips == ("10.1.0.5", "fd00::5")
    assert pod.containers == ("main", "sidecar")
    assert pod.container_ids == {"abc": "sidecar"}  # containerd:// stripped
    assert pod.labels == {"app": "web"}
    assert pod.owner == objects.OwnerRef("ReplicaSet", "web-5d", "apps")
    assert (pod.namespace, pod.node, pod.host_network) == ("shop", "node-1", False)


def test_pod_without_pod_ips_falls_back_to_pod_ip() -> None:
    raw = cluster.pod("a")
    del raw["status"]["podIPs"]
    assert objects.pod_from_json(raw, ()).ips == ("10.1.0.5",)


def test_controller_owner_preferred_over_others() -> None:
    raw = cluster.pod("a")
    raw["metadata"]["ownerReferences"] = [
        {"kind": "Something", "name": "other"},
        {"kind": "Job", "name": "nightly-123", "controller": True},
    ]
    assert objects.pod_from_json(raw, ()).owner == objects.OwnerRef("Job", "nightly-123", None)


def test_service_addresses_include_cluster_external_and_lb_but_not_headless() -> None:
    svc = objects.service_from_json(
        cluster.service("db", cluster_ips=("10.96.0.10", "fd00::10"), external_ips=("198.51.100.1",),
                        lb_ips=("203.0.113.9",))
    )  # fmt: skip
    assert svc.ips == ("10.96.0.10", "fd00::10", "198.51.100.1", "203.0.113.9")
    assert objects.service_from_json(cluster.service("h", cluster_ips=())).ips == ()


def test_node_internal_and_external_addresses_only() -> None:
    node = objects.node_from_json(cluster.node("n1", "192.168.0.1", "203.0.113.1"))
    assert node.ips == ("192.168.0.1", "203.0.113.1")


def test_endpointslice_needs_its_service_label() -> None:
    s = objects.endpointslice_from_json(cluster.endpointslice("db-x1", "db", ("10.1.0.7",)))
    assert (s.service, s.addresses) == ("db", ("10.1.0.7",))
    raw = cluster.endpointslice("db-x1", "db", ("10.1.0.7",))
    raw["metadata"]["labels"] = {}
    with pytest.raises(OddObject):
        objects.endpointslice_from_json(raw)


@pytest.mark.parametrize(
    "raw",
    [{}, {"metadata": None}, {"metadata": {"name": 5}}, {"metadata": {"name": "a"}, "spec": "x"}],
)
def test_odd_pods_raise_odd_object(raw: dict) -> None:
    with pytest.raises(OddObject):
        objects.pod_from_json(raw, ())


def test_odd_fields_inside_lists_are_ignored() -> None:
    raw = cluster.pod("a")
    raw["status"]["podIPs"] = [None, {"ip": 5}, {"ip": "10.1.0.9"}, "junk"]
    raw["spec"]["containers"] = [{"noname": 1}, {"name": "main"}]
    pod = objects.pod_from_json(raw, ())
    assert pod.ips == ("10.1.0.9",) and pod.containers == ("main",)


def test_addresses_canonical_and_odd_ones_skipped_by_name() -> None:
    raw = cluster.pod("a", ips=("10.1.0.9", "FD00:10:244:0:0:0:0:5", "10.1.0.999", "fd00::5"))
    skipped: list[str] = []
    pod = objects.pod_from_json(raw, (), skipped)
    assert pod.ips == ("10.1.0.9", "fd00:10:244::5", "fd00::5")
    assert skipped == ["status.podIPs: not an IP address: '10.1.0.999'"]
    raw = cluster.service("s", cluster_ips=("FD00:96::0:10",), external_ips=("2001:DB8::1", "x"),
                          lb_ips=("2001:db8:0:0::2", "2001:DB8::1"))  # fmt: skip
    skipped = []
    svc = objects.service_from_json(raw, skipped)
    assert svc.ips == ("fd00:96::10", "2001:db8::1", "2001:db8::2")
    assert skipped == ["spec.externalIPs: not an IP address: 'x'"]
    node = objects.node_from_json(cluster.node("n", "FD00:0:0:0::A", "203.0.113.01"), skipped := [])
    assert node.ips == ("fd00::a",) and len(skipped) == 1
    eps = objects.endpointslice_from_json(
        cluster.endpointslice("e", "s", ("FD00::7", "nope")), skipped := []
    )
    assert eps.addresses == ("fd00::7",) and len(skipped) == 1
    assert objects.pod_from_json(cluster.pod("b", ips=("bad",)), ()).ips == ()


def test_fqdn_endpointslice_indexes_no_addresses() -> None:
    raw = cluster.endpointslice("e", "s", ("db.example.com",))
    raw["addressType"] = "FQDN"
    skipped: list[str] = []
    assert objects.endpointslice_from_json(raw, skipped).addresses == () and not skipped


@pytest.mark.parametrize(
    "phase,finished",
    [("Pending", False), ("Running", False), ("Succeeded", True), ("Failed", True),
     ("Unknown", False), (None, False), (["Failed"], False)],
)  # fmt: skip
def test_pod_finished_from_its_phase(phase: object, finished: bool) -> None:
    raw = cluster.pod("a")
    raw["status"]["phase"] = phase
    assert objects.pod_from_json(raw, ()).finished is finished
