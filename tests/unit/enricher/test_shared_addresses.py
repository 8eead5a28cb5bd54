"""An address several Services (or nodes) list stays theirs while one of them still lists
it: Services sharing a load-balancer IP (MetalLB's allow-shared-ip), nodes behind one NAT
given the same ExternalIP."""

from __future__ import annotations

from flowscope.enricher import objects
from flowscope.enricher.inventory import Inventory

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock

LB = "192.0.2.50"
NAT = "198.51.100.7"


def service(inv: Inventory, name: str, cluster_ip: str, lb_ips: tuple[str, ...]) -> None:
    raw = cluster.service(name, cluster_ips=(cluster_ip,), lb_ips=lb_ips)
    inv.upsert("services", objects.service_from_json(raw))


def service_at(inv: Inventory, address: str) -> str | None:
    return inv.resolve(address).source.get("source.k8s.service.name")


def node_at(inv: Inventory, address: str) -> str | None:
    return inv.resolve(address).source.get("source.k8s.node.name")


def test_a_shared_load_balancer_ip_stays_with_the_service_still_listing_it() -> None:
    inv = Inventory(deleted_grace=60, clock=Clock())
    service(inv, "dns-tcp", "10.96.0.1", (LB,))
    service(inv, "dns-udp", "10.96.0.2", (LB,))
    assert service_at(inv, LB) == "dns-udp"
    service(inv, "dns-udp", "10.96.0.2", ())  # its load-balancer IP released
    assert service_at(inv, LB) == "dns-tcp"
    assert service_at(inv, "10.96.0.2") == "dns-udp"


def test_a_deleted_service_gives_a_shared_ip_to_the_live_one_and_keeps_its_own() -> None:
    clock = Clock()
    inv = Inventory(deleted_grace=60, clock=clock)
    service(inv, "dns-tcp", "10.96.0.1", (LB,))
    service(inv, "dns-udp", "10.96.0.2", (LB,))
    assert service_at(inv, LB) == "dns-udp"
    inv.delete("services", ("shop", "dns-udp"))
    assert service_at(inv, LB) == "dns-tcp"  # the live claim is the newer
    assert service_at(inv, "10.96.0.2") == "dns-udp"  # its own, for the grace
    clock.now += 61
    inv.sweep()
    assert service_at(inv, LB) == "dns-tcp"
    assert inv.resolve("10.96.0.2").kind == "external"


def test_an_external_ip_two_nodes_share_stays_a_node_while_one_lists_it() -> None:
    clock = Clock()
    inv = Inventory(deleted_grace=60, clock=clock)
    for name, internal in (("edge-1", "10.0.0.1"), ("edge-2", "10.0.0.2")):
        inv.upsert("nodes", objects.node_from_json(cluster.node(name, internal, NAT)))
    assert node_at(inv, NAT) == "edge-2"
    inv.delete("nodes", ("", "edge-2"))
    clock.now += 61
    inv.sweep()
    assert node_at(inv, NAT) == "edge-1"
    assert inv.resolve("10.0.0.2").kind == "external"
