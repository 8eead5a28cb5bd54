"""A terminating pod (deletionTimestamp set, phase still Running) has likely given its
address back: the live pod given it owns it; the terminating one resolves only while no
other pod holds the address."""

from __future__ import annotations

from typing import Any

from flowscope.enricher import objects
from flowscope.enricher.inventory import Inventory

from tests.unit.enricher import cluster

IP = "10.1.0.9"


def terminating(name: str, ip: str = IP, **kw: Any) -> dict[str, Any]:
    pod = cluster.pod(name, ips=(ip,), **kw)
    pod["metadata"]["deletionTimestamp"] = "2026-11-22T19:00:00Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    return pod


def upsert(inv: Inventory, pod: dict[str, Any]) -> None:
    inv.upsert("pods", objects.pod_from_json(pod, ()))


def name_at(inv: Inventory, ip: str = IP) -> str | None:
    return inv.resolve(ip).meta.get("k8s.pod.name")


def test_deletion_timestamp_marks_the_pod_terminating() -> None:
    assert objects.pod_from_json(terminating("old"), ()).terminating
    assert not objects.pod_from_json(cluster.pod("new"), ()).terminating


def test_terminating_pod_updated_after_the_new_pod_does_not_take_the_address_back() -> None:
    inv = Inventory(deleted_grace=60, clock=cluster.Clock())
    upsert(inv, cluster.pod("old", ips=(IP,)))
    upsert(inv, terminating("old"))
    upsert(inv, cluster.pod("new", ips=(IP,)))
    assert name_at(inv) == "new"
    still = terminating("old")
    still["status"]["containerStatuses"] = [{"name": "main", "containerID": "containerd://c1"}]
    upsert(inv, still)  # its containers stop: a status update of the terminating pod
    assert name_at(inv) == "new"


def test_terminating_pod_listed_after_the_new_one_does_not_take_the_address() -> None:
    inv = Inventory(deleted_grace=60, clock=cluster.Clock())
    inv.replace("pods", [objects.pod_from_json(p, ()) for p in (
        cluster.pod("new", ips=(IP,)), terminating("old"))])  # fmt: skip
    assert name_at(inv) == "new"


def test_terminating_pod_keeps_resolving_while_no_other_pod_holds_its_address() -> None:
    inv = Inventory(deleted_grace=60, clock=cluster.Clock())
    upsert(inv, cluster.pod("old", ips=(IP,)))
    upsert(inv, terminating("old"))
    assert name_at(inv) == "old"  # its last flows, while it shuts down


def test_newest_of_two_live_pods_still_wins() -> None:
    inv = Inventory(deleted_grace=60, clock=cluster.Clock())
    upsert(inv, cluster.pod("a", ips=(IP,)))
    upsert(inv, cluster.pod("b", ips=(IP,)))
    assert name_at(inv) == "b"
