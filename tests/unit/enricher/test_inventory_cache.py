"""The inventory's identity caches drop exactly what a change can affect.

A property test applies random sequences of changes (pods — hostNetwork, addresses
shared between a deleted and a live pod, IPv6, container ids moving between pods,
finished pods, pods re-created under their name with another uid —,
services, nodes, EndpointSlices, controllers with owner chains that may loop; upserts of
equal and changed objects, deletes, full LISTs, sweeps) interleaved with lookups, and
holds every cached answer equal to the identity built afresh from the same inventory
with the caches bypassed. Explicit tests check that unrelated changes leave entries in
place (the point of targeted invalidation).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flowscope.enricher import inventory, objects
from flowscope.enricher.identities import Identity
from flowscope.enricher.inventory import WORKLOAD_RESOURCES, Inventory, Obj, object_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock

LABELS = ("app",)
NAMESPACES = ("a", "b")
# Pod, service and node addresses drawn from one small pool, so that they collide.
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "fd00::2", "192.168.0.1", "10.96.0.1")
CONTAINER_IDS = ("c0", "c1", "c2", "c3")
KINDS = ("ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
POD_NAMES = ("p0", "p1", "p2", "p3")
OWNER_NAMES = ("w0", "w0", "w1")  # mostly one name, so that chains form

# Mostly one namespace, so that owner references and addresses meet.
namespaces = st.sampled_from(NAMESPACES + NAMESPACES[:1] * 3)
# Mostly ReplicaSet and Deployment, so that chains of two and more form.
owner_kinds = st.sampled_from(KINDS[:2] * 4 + KINDS[2:])
owner_refs = st.tuples(owner_kinds, st.sampled_from(OWNER_NAMES))
owners = st.none() | owner_refs
# Controllers mostly have an owner: changing one then changes the chains below it.
workload_owners = st.one_of(st.none(), owner_refs, owner_refs, owner_refs)
some_addresses = st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True).map(tuple)


def grouped(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its owner reference's apiVersion: mostly its kind's built-in one, else
    none or a custom resource's (which is no workload)."""
    for ref in raw["metadata"].get("ownerReferences", ()):
        builtin = "batch/v1" if ref["kind"] in ("Job", "CronJob") else "apps/v1"
        api = draw(st.sampled_from((builtin, builtin, None, "example.com/v1")))
        ref.pop("apiVersion", None)
        if api is not None:
            ref["apiVersion"] = api
    return raw


@st.composite
def pods(draw: st.DrawFn) -> tuple[str, Obj]:
    containers = draw(st.sampled_from((("main",), ("main", "side"))))
    ids = draw(st.dictionaries(st.sampled_from(CONTAINER_IDS), st.sampled_from(containers),
                               max_size=2))  # fmt: skip
    raw = cluster.pod(
        draw(st.sampled_from(POD_NAMES)),
        draw(namespaces),
        ips=draw(some_addresses),
        node=draw(st.sampled_from(("n0", "n1"))),
        owner=draw(owners),
        containers=containers,
        container_ids=ids,
        labels=draw(st.sampled_from(({}, {"app": "v1"}, {"app": "v2"}))),
        host_network=draw(st.booleans()),
        uid=draw(st.sampled_from(("u0", "u0", "u1"))),  # mostly the same pod again
    )
    raw["status"]["phase"] = draw(st.sampled_from(("Running", "Running", "Succeeded", "Failed")))
    if draw(st.integers(0, 3)) == 0:
        raw["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return "pods", objects.pod_from_json(grouped(draw, raw), LABELS)


@st.composite
def services(draw: st.DrawFn) -> tuple[str, Obj]:
    raw = cluster.service(draw(st.sampled_from(("s0", "s1"))), draw(namespaces),
                          cluster_ips=draw(some_addresses))  # fmt: skip
    return "services", objects.service_from_json(raw)


@st.composite
def nodes(draw: st.DrawFn) -> tuple[str, Obj]:
    internal = draw(st.sampled_from(ADDRESSES))
    external = draw(st.none() | st.sampled_from(ADDRESSES))
    raw = cluster.node(draw(st.sampled_from(("n0", "n1"))), internal, external)
    return "nodes", objects.node_from_json(raw)


@st.composite
def slices(draw: st.DrawFn) -> tuple[str, Obj]:
    # endpoints whose targetRef names one of the pods, or no pod
    targets = st.lists(st.sampled_from(POD_NAMES), max_size=2).map(tuple)
    # an address may be listed twice (an old pod's endpoint and the new pod's)
    addresses = st.lists(st.sampled_from(ADDRESSES), max_size=3).map(tuple)
    raw = cluster.endpointslice(draw(st.sampled_from(("e0", "e1", "e2"))),
                                draw(st.sampled_from(("s0", "s1"))), draw(addresses),
                                draw(namespaces), draw(targets))  # fmt: skip
    return "endpointslices", objects.endpointslice_from_json(raw)


@st.composite
def workloads(draw: st.DrawFn) -> tuple[str, Obj]:
    kind = draw(owner_kinds)
    raw = cluster.workload(kind, draw(st.sampled_from(OWNER_NAMES)), draw(namespaces),
                           owner=draw(workload_owners))  # fmt: skip
    return WORKLOAD_RESOURCES[kind], objects.workload_from_json(kind)(grouped(draw, raw))


any_object = st.one_of(pods(), services(), nodes(), slices(), workloads())
operations = st.one_of(
    st.tuples(st.just("upsert"), any_object),
    # An object upserted before, again (a status-only update: an equal slim object).
    st.tuples(st.just("again"), st.sampled_from((1, 2, 3, 0))),
    st.tuples(st.just("delete"), any_object),
    st.tuples(st.just("sweep"), st.sampled_from((10.0, 30.0, 61.0))),
    st.tuples(st.just("replace"), st.lists(pods(), max_size=3)),
    st.tuples(st.just("resolve"), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("container"), st.sampled_from(CONTAINER_IDS)),
    # Identities built ahead, as the enricher's warming task does between batches.
    st.tuples(st.just("warm"), st.sampled_from((1, 2, 100))),
)


class Reference(Inventory):
    """The inventory as it was before targeted invalidation, without caches: every upsert
    re-indexes (an equal object too), every answer is built afresh."""

    def upsert(self, resource: str, obj: Obj) -> None:
        store = self.stores.setdefault(resource, {})
        key = object_key(resource, obj)
        old = store.get(key)
        if isinstance(obj, objects.Pod) and obj.finished:
            self._finished(resource, key, old, obj)
        if old is not None:
            self._release(resource, key, old, obj)
        store[key] = obj
        self._index(obj)

    def resolve(self, address: str) -> Identity:
        return self._build(address)

    def by_container(self, container_id: str) -> Identity | None:
        return self._build_container(container_id)


def check(inv: Inventory, ref: Reference, address: str = "", container: str = "") -> None:
    """The cached answer equals the one built afresh, and the reference inventory's."""
    if address:
        assert inv.resolve(address) == inv._build(address) == ref.resolve(address), address
    if container:
        found = inv.by_container(container)
        assert found == inv._build_container(container) == ref.by_container(container)


def check_all(inv: Inventory, ref: Reference) -> None:
    for address in ADDRESSES:
        check(inv, ref, address=address)
    for cid in CONTAINER_IDS:
        check(inv, ref, container=cid)


def apply(inv: Inventory, clock: Clock, op: str, arg: Any) -> None:
    if op == "upsert":
        inv.upsert(*arg)
    elif op == "delete":
        resource, obj = arg
        inv.delete(resource, object_key(resource, obj))
    elif op == "sweep":
        clock.now += arg
        inv.sweep()
    elif op == "replace":
        inv.replace("pods", [obj for _, obj in arg])


def copied(op: str, arg: Any) -> Any:
    """The same change with objects of its own (an inventory marks deleted objects)."""
    if op == "upsert" or op == "delete" or op == "again":
        return (arg[0], copy.deepcopy(arg[1]))
    if op == "replace":
        return copy.deepcopy(arg)
    return arg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, min_size=20, max_size=80),
       st.lists(st.booleans(), min_size=80, max_size=80))  # fmt: skip
def test_cached_answers_equal_fresh_ones_after_any_changes(
    ops: list[tuple[str, Any]], full_checks: list[bool]
) -> None:
    clock, ref_clock = Clock(), Clock()
    inv = Inventory(deleted_grace=60, clock=clock)
    ref = Reference(deleted_grace=60, clock=ref_clock)
    cache, container_cache = inv._cache, inv._container_cache
    upserted: list[tuple[str, Obj]] = []
    for i, (op, arg) in enumerate(ops):
        if op == "upsert":  # kept as converted (an inventory marks deleted objects)
            upserted.append(copied(op, arg))
        elif op == "again":
            if not upserted:
                continue
            # one of the last few: likely still the stored object, so an equal one
            op, arg = "upsert", copied(op, upserted[-1 - arg % len(upserted)])
        if op == "resolve":
            check(inv, ref, address=arg)
        elif op == "container":
            check(inv, ref, container=arg)
        elif op == "warm":
            inv.warm(arg)
        else:
            apply(ref, ref_clock, op, copied(op, arg))
            apply(inv, clock, op, arg)
        check_bookkeeping(inv)
        if full_checks[i]:  # else the caches stay partly filled, as between flows
            check_all(inv, ref)
    check_all(inv, ref)
    check_bookkeeping(inv)
    # The compiled flow core holds ``_cache`` itself: changed in place, never rebound.
    assert inv._cache is cache and inv._container_cache is container_cache
    # Warmed through, every address a pod, service or node holds has its identity built
    # (the one built afresh: check_all above), and nothing else was built ahead.
    cache.clear()
    inv._cold.update(dict.fromkeys(ADDRESSES))
    while inv.warm(2):
        pass
    held = {*inv._pod_ips, *inv._service_ips, *inv._node_ips}
    assert set(cache) == held and not inv._cold and not inv.cold.is_set()
    check_all(inv, ref)


def check_bookkeeping(inv: Inventory) -> None:
    """The address → container index holds exactly the cached container identities."""
    indexed = {(a, c) for a, cids in inv._cached_containers.items() for c in cids}
    cached = {
        (a, c) for c, f in inv._container_cache.items() if f
        for a in (f.source["source.address"], *(f.elsewhere or ()))
    }  # fmt: skip
    assert indexed == cached


# ---------------------------------------------------------------- unrelated changes


def pod(name: str, **kw: Any) -> Obj:
    return objects.pod_from_json(cluster.pod(name, **kw), LABELS)


def make() -> Inventory:
    inv = Inventory(deleted_grace=60, clock=Clock())
    wl = objects.workload_from_json
    inv.upsert("deployments", wl("Deployment")(cluster.workload("Deployment", "web")))
    inv.upsert("replicasets", wl("ReplicaSet")(
        cluster.workload("ReplicaSet", "web-5d", owner=("Deployment", "web"))))  # fmt: skip
    inv.upsert("pods", pod("web-5d-a", ips=("10.1.0.1",), owner=("ReplicaSet", "web-5d"),
                           container_ids={"ca": "main"}, labels={"app": "web"}))  # fmt: skip
    inv.upsert("pods", pod("db-0", ips=("10.1.0.2",), owner=("StatefulSet", "db"),
                           container_ids={"cb": "main"}))  # fmt: skip
    return inv


def test_entry_survives_changes_to_other_objects() -> None:
    inv = make()
    a, a_container = inv.resolve("10.1.0.1"), inv.by_container("ca")
    inv.upsert("pods", pod("db-0", ips=("10.1.0.2",), owner=("StatefulSet", "db"),
                           container_ids={"cb": "main"}, labels={"app": "db"}))  # fmt: skip
    inv.upsert(
        "services", objects.service_from_json(cluster.service("db", cluster_ips=("10.96.0.2",)))
    )
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-1", "192.168.0.1")))
    inv.upsert("endpointslices", objects.endpointslice_from_json(
        cluster.endpointslice("db-x", "db", ("10.1.0.2",))))  # fmt: skip
    inv.upsert("statefulsets", objects.workload_from_json("StatefulSet")(
        cluster.workload("StatefulSet", "db")))  # fmt: skip
    inv.delete("pods", ("shop", "db-0"))
    assert inv.resolve("10.1.0.1") is a and inv.by_container("ca") is a_container
    assert inv.resolve("10.1.0.2").source["source.k8s.service.name"] == "db"
    assert inv.resolve("10.1.0.2").source["source.k8s.pod.labels.app"] == "db"


def test_status_only_update_keeps_the_pods_own_entry() -> None:
    inv = make()
    a, a_container = inv.resolve("10.1.0.1"), inv.by_container("ca")
    # What a readiness or status change leaves of the pod: an equal slim object.
    inv.upsert("pods", pod("web-5d-a", ips=("10.1.0.1",), owner=("ReplicaSet", "web-5d"),
                           container_ids={"ca": "main"}, labels={"app": "web"}))  # fmt: skip
    inv.upsert("replicasets", objects.workload_from_json("ReplicaSet")(
        cluster.workload("ReplicaSet", "web-5d", owner=("Deployment", "web"))))  # fmt: skip
    assert inv.resolve("10.1.0.1") is a and inv.by_container("ca") is a_container


def test_label_change_rebuilds_only_that_pod() -> None:
    inv = make()
    a, b = inv.resolve("10.1.0.1"), inv.resolve("10.1.0.2")
    inv.upsert("pods", pod("web-5d-a", ips=("10.1.0.1",), owner=("ReplicaSet", "web-5d"),
                           container_ids={"ca": "main"}, labels={"app": "web2"}))  # fmt: skip
    assert inv.resolve("10.1.0.1").source["source.k8s.pod.labels.app"] == "web2"
    assert inv.by_container("ca").source["source.k8s.pod.labels.app"] == "web2"  # type: ignore[union-attr]
    assert inv.resolve("10.1.0.1") is not a and inv.resolve("10.1.0.2") is b


def test_controller_change_reaches_pods_below_it_only() -> None:
    inv = make()
    a, b = inv.resolve("10.1.0.1"), inv.resolve("10.1.0.2")
    # The ReplicaSet changes hands: the pod below it sees it, db-0 does not.
    inv.upsert("replicasets", objects.workload_from_json("ReplicaSet")(
        cluster.workload("ReplicaSet", "web-5d", owner=("Deployment", "web2"))))  # fmt: skip
    moved = inv.resolve("10.1.0.1")
    assert moved is not a and moved.source["source.k8s.workload.name"] == "web2"
    assert inv.resolve("10.1.0.2") is b
    inv.upsert("cronjobs", objects.workload_from_json("CronJob")(
        cluster.workload("CronJob", "nightly")))  # fmt: skip
    assert inv.resolve("10.1.0.1") is moved and inv.resolve("10.1.0.2") is b


def test_slice_change_reaches_host_network_pod_container_on_node_address() -> None:
    inv = make()
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-1", "192.168.0.1")))
    inv.upsert("pods", pod("agent", ips=("192.168.0.1",), host_network=True,
                           container_ids={"cc": "main"}))  # fmt: skip
    node, agent = inv.resolve("192.168.0.1"), inv.by_container("cc")
    assert agent is not None and "source.k8s.service.name" not in agent.source
    inv.upsert("endpointslices", objects.endpointslice_from_json(
        cluster.endpointslice("agent-x", "agent", ("192.168.0.1",), pods=("agent",))))  # fmt: skip
    refined = inv.by_container("cc")
    assert refined is not None and refined.source["source.k8s.service.name"] == "agent"
    assert inv.resolve("192.168.0.1") == node  # a node's identity names no service


def test_delete_keeps_entries_until_the_sweep() -> None:
    clock = Clock()
    inv = Inventory(deleted_grace=60, clock=clock)
    inv.upsert("pods", pod("short", ips=("10.1.0.9",), container_ids={"cd": "main"}))
    ident = inv.resolve("10.1.0.9")
    inv.delete("pods", ("shop", "short"))
    assert inv.resolve("10.1.0.9") is ident
    clock.now += 61
    assert inv.sweep() == 1
    assert inv.resolve("10.1.0.9").kind == "external" and inv.by_container("cd") is None


def test_equal_upsert_of_a_pod_that_lost_its_address_takes_it_back() -> None:
    # A completed pod keeps its IP in its status while the IP is reused: two live pods on
    # one address, the last upserted owns it. An equal re-upsert is not skipped then.
    inv = Inventory(deleted_grace=60, clock=Clock())
    inv.upsert("pods", pod("done", ips=("10.1.0.4",)))
    inv.upsert("pods", pod("running", ips=("10.1.0.4",)))
    assert inv.resolve("10.1.0.4").source["source.k8s.pod.name"] == "running"
    inv.upsert("pods", pod("done", ips=("10.1.0.4",)))
    assert inv.resolve("10.1.0.4").source["source.k8s.pod.name"] == "done"


# ---------------------------------------------------------------- built ahead


def test_warm_builds_what_changes_left_cold_once_synced() -> None:
    inv = make()
    inv.expected.add("pods")
    assert inv.warm(100) == [] and not inv._cache  # the first LISTs are not all in
    inv.mark_synced("pods")
    assert inv.cold.is_set()
    assert len(inv.warm(1)) == 1 and inv.cold.is_set()
    assert len(inv.warm(100)) == 1 and not inv.cold.is_set()
    web, db = inv._cache["10.1.0.1"], inv._cache["10.1.0.2"]
    assert web == inv._build("10.1.0.1") and db.source["source.k8s.pod.name"] == "db-0"
    assert inv.warm(100) == []
    # A label change leaves that pod's address cold; warming builds it alone again.
    inv.upsert("pods", pod("web-5d-a", ips=("10.1.0.1",), owner=("ReplicaSet", "web-5d"),
                           container_ids={"ca": "main"}, labels={"app": "api"}))  # fmt: skip
    assert "10.1.0.1" not in inv._cache and inv.cold.is_set()
    assert inv.warm(100) == ["10.1.0.1"] and inv._cache["10.1.0.2"] is db
    assert inv.resolve("10.1.0.1").source["source.k8s.pod.labels.app"] == "api"


def test_warm_leaves_external_and_host_network_addresses_alone() -> None:
    clock = Clock()
    inv = Inventory(deleted_grace=60, clock=clock)
    inv.upsert("pods", pod("host", ips=("10.0.9.1",), host_network=True))
    inv.upsert("pods", pod("gone", ips=("10.1.0.9",)))
    inv.delete("pods", ("shop", "gone"))
    assert inv.warm(100) == ["10.1.0.9"] and set(inv._cache) == {"10.1.0.9"}  # still in its grace
    clock.now += 61
    inv.sweep()  # the address goes cold, and holds nothing now: not built ahead
    assert inv.warm(100) == [] and not inv._cache and not inv.cold.is_set()


def test_warm_fills_the_cache_only_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "MAX_WARM", 3)
    inv = Inventory(deleted_grace=60, clock=Clock())
    for n in range(6):
        inv.upsert("pods", pod(f"p{n}", ips=(f"10.1.0.{n}",)))
    assert len(inv.warm(100)) == 3 and len(inv._cache) == 3
    assert not inv.cold.is_set()  # the rest are built when a flow asks
    assert inv.resolve("10.1.0.5").source["source.k8s.pod.name"] == "p5"
