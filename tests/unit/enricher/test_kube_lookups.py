"""Which Kubernetes object an address, or a socket's container id, names.

Regression tests for three lookups that named the wrong object: a hostNetwork pod given
the Service of any EndpointSlice listing its node's address; a node address that is also
a Service's load-balancer IP resolved to the Service; a dual-stack pod refined by its
container id given the Services of its first address instead of the flow's.
"""

from __future__ import annotations

from typing import Any

from flowscope.enricher import objects
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_enriching import flow, only, sock

NODE, B = "192.168.0.1", "10.2.0.7"
V4, V6, PEER6 = "10.1.0.5", "fd00::5", "fd00::9"


def inventory(*objs: tuple[str, Any]) -> Inventory:
    """An inventory holding node-1 (NODE), pod data/b (B) and ``objs`` (resource, JSON)."""
    inv = Inventory(60, clock=Clock())
    convert = {
        "nodes": objects.node_from_json, "services": objects.service_from_json,
        "endpointslices": objects.endpointslice_from_json,
        "pods": lambda raw: objects.pod_from_json(raw, ()),
    }  # fmt: skip
    base = [("nodes", cluster.node("node-1", NODE)),
            ("pods", cluster.pod("b", namespace="data", ips=(B,), node="node-1"))]  # fmt: skip
    for resource, raw in [*base, *objs]:
        inv.upsert(resource, convert[resource](raw))
    inv.mark_synced("all")
    return inv


def enricher(inv: Inventory) -> Enricher:
    clock = Clock()
    return Enricher(
        inv, SocketTable(1000, 30, clock), NameCache(60, 3600, 1000, clock), Observers(300, clock),
        clock,
    )  # fmt: skip


def host_pod(name: str, namespace: str = "kube-system") -> tuple[str, Any]:
    return "pods", cluster.pod(name, namespace=namespace, ips=(NODE,), node="node-1",
                               host_network=True, containers=(name,),
                               container_ids={f"c{name}": name})  # fmt: skip


def untargeted(raw: dict[str, Any]) -> dict[str, Any]:
    """The slice with no targetRef on any endpoint (the apiserver's ``kubernetes`` one)."""
    for ep in raw["endpoints"]:
        ep.pop("targetRef")
    return raw


def service_of(ident: Any) -> Any:
    return ident.meta.get("k8s.service.name")


# ---------------------------------------------------------------- hostNetwork pods


def test_host_network_pod_not_named_by_a_slice_listing_its_node_address() -> None:
    slice_ = untargeted(cluster.endpointslice("kubernetes", "kubernetes", (NODE,), "default"))
    inv = inventory(host_pod("etcd"), ("endpointslices", slice_))
    assert service_of(inv.by_container("cetcd")) is None
    rec = only(enricher(inv), [flow("node-1", NODE, B, 5000, 80)])  # no socket event
    assert rec["source.kind"] == "node" and "source.k8s.service.name" not in rec
    e = enricher(inv)
    e.learn_sockets([sock("node-1", "connect", NODE, 5000, B, 80, 12, "cetcd")])
    rec = only(e, [flow("node-1", NODE, B, 5000, 80)])
    assert rec["source.k8s.pod.name"] == "etcd" and "source.k8s.service.name" not in rec


def test_untargeted_endpoint_in_the_pods_own_namespace_never_names_a_host_network_pod() -> None:
    slice_ = untargeted(cluster.endpointslice("node-x", "node-svc", (NODE,), "kube-system"))
    inv = inventory(host_pod("agent"), ("endpointslices", slice_))
    assert service_of(inv.by_container("cagent")) is None


def test_host_network_pod_named_by_the_endpoint_whose_target_ref_is_it() -> None:
    others = cluster.endpointslice("kubernetes", "kubernetes", (NODE,), "default")
    mine = cluster.endpointslice("agent-x", "agent", (NODE,), "kube-system", pods=("agent",))
    inv = inventory(host_pod("agent"), host_pod("other"), ("endpointslices", untargeted(others)),
                    ("endpointslices", mine))  # fmt: skip
    assert service_of(inv.by_container("cagent")) == "agent"
    assert service_of(inv.by_container("cother")) is None  # same address, not its endpoint


def test_pod_named_only_by_endpoints_that_are_its_own() -> None:
    stale = cluster.endpointslice("old-x", "old", (B,), "data", pods=("gone",))
    elsewhere = untargeted(cluster.endpointslice("far-x", "far", (B,), "shop"))
    untargeted_here = untargeted(cluster.endpointslice("near-x", "near", (B,), "data"))
    inv = inventory(*[("endpointslices", s) for s in (stale, elsewhere)])
    assert service_of(inv.resolve(B)) is None
    inv.upsert("endpointslices", objects.endpointslice_from_json(untargeted_here))
    assert service_of(inv.resolve(B)) == "near"  # no targetRef, the pod's namespace


def test_endpointslice_keeps_each_endpoints_target() -> None:
    raw = cluster.endpointslice("e", "s", ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"),
                                "data", pods=("p1", "p2", "p3"))  # fmt: skip
    refs = [ep["targetRef"] for ep in raw["endpoints"]]
    refs[1]["kind"] = "Node"
    refs[2]["namespace"] = "other"
    raw["endpoints"][3].pop("targetRef")
    s = objects.endpointslice_from_json(raw)
    assert s.targets == ("p1", objects.ELSEWHERE, objects.ELSEWHERE, "")


# ---------------------------------------------------------------- node addresses


def test_node_address_that_is_a_load_balancer_ip_resolves_to_the_node() -> None:
    lb = cluster.service("traefik", namespace="kube-system", cluster_ips=("10.43.0.20",),
                         lb_ips=(NODE,))  # fmt: skip
    inv = inventory(host_pod("agent"), ("services", lb))
    node = inv.resolve(NODE)
    assert (node.kind, node.meta) == ("node", {"k8s.node.name": "node-1"})
    assert service_of(inv.resolve("10.43.0.20")) == "traefik"  # its ClusterIP
    e = enricher(inv)
    e.learn_sockets([sock("node-1", "connect", NODE, 5000, B, 80, 12, "cagent")])
    rec = only(e, [flow("node-1", NODE, B, 5000, 80)])
    assert (rec["source.kind"], rec["source.k8s.pod.name"]) == ("pod", "agent")


# ---------------------------------------------------------------- dual-stack refinement


def test_dual_stack_pod_refined_keeps_the_services_of_the_flows_address() -> None:
    v6_only = cluster.endpointslice("web6-x", "web6", (V6,), pods=("web",))
    v4_only = cluster.endpointslice("web4-x", "web4", (V4,), pods=("web",))
    web = cluster.pod("web", ips=(V4, V6), node="node-1", container_ids={"cweb": "main"})
    peer = cluster.pod("peer", ips=(PEER6,), node="node-1")
    inv = inventory(("pods", web), ("pods", peer), ("endpointslices", v6_only),
                    ("endpointslices", v4_only))  # fmt: skip
    e = enricher(inv)
    e.learn_sockets([sock("node-1", "accept", V6, 80, PEER6, 40000, 7, "cweb")])
    rec = only(e, [flow("node-1", PEER6, V6, 40000, 80)])
    assert rec["destination.k8s.container.name"] == "main"
    assert rec["destination.k8s.service.name"] == "web6"
    # A slice change at the second address reaches the refined identity too.
    inv.upsert("endpointslices", objects.endpointslice_from_json(
        cluster.endpointslice("web6-x", "web6b", (V6,), pods=("web",))))  # fmt: skip
    rec = only(e, [flow("node-1", PEER6, V6, 40000, 80)])
    assert rec["destination.k8s.service.name"] == "web6b"


# ---------------------------------------------------------------- default container


def meshed(name: str, ip: str, default: Any) -> tuple[str, Any]:
    """A pod whose mesh put its proxy ahead of the application in the spec, annotated
    with ``default`` as its default container (None: no annotation)."""
    raw = cluster.pod(name, ips=(ip,), containers=("linkerd-proxy", "app", "log-shipper"))
    if default is not None:
        raw["metadata"]["annotations"] = {objects.DEFAULT_CONTAINER: default}
    return "pods", raw


def test_a_flow_without_a_socket_event_names_the_pods_default_container() -> None:
    """kubectl's default-container annotation picks the container a flow is given when
    no socket event names one; one naming no container of the pod, or not a string, is
    ignored (kubectl warns and takes the first), as is its absence."""
    pods = {"10.1.0.11": "app", "10.1.0.12": "log-shipper", "10.1.0.13": "nope",
            "10.1.0.14": ["app"], "10.1.0.15": None}  # fmt: skip
    inv = inventory(*(meshed(f"p{i}", ip, d) for i, (ip, d) in enumerate(pods.items())))
    e = enricher(inv)
    names = [only(e, [flow("node-1", B, ip, 40000 + i, 80)])["destination.k8s.container.name"]
             for i, ip in enumerate(pods)]  # fmt: skip
    assert names == ["app", "log-shipper", "linkerd-proxy", "linkerd-proxy", "linkerd-proxy"]
    # a socket event naming the proxy's container id still names the proxy
    raw = cluster.pod("q", ips=("10.1.0.16",), containers=("linkerd-proxy", "app"),
                      container_ids={"cproxy": "linkerd-proxy", "capp": "app"})  # fmt: skip
    raw["metadata"]["annotations"] = {objects.DEFAULT_CONTAINER: "app"}
    inv.upsert("pods", objects.pod_from_json(raw, ()))
    e.learn_sockets([sock("node-1", "accept", "10.1.0.16", 15006, B, 41000, 9, "cproxy")])
    rec = only(e, [flow("node-1", B, "10.1.0.16", 41000, 15006)])
    assert rec["destination.k8s.container.name"] == "linkerd-proxy"
    assert only(e, [flow("node-1", B, "10.1.0.16", 41001, 80)])[
        "destination.k8s.container.name"] == "app"  # fmt: skip
