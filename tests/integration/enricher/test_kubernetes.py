"""End to end with Kubernetes: fake API over HTTP, real nats-server, raw in, records out.

Records are checked field by field against DESIGN.md's flow record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flowscope.core import codec, records, subjects
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    Collected,
    Replica,
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    raw_socket,
    start_replica,
)
from tests.support.fake_kube import FakeKube
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

WEB, DB, AGENT, NODE1, NODE2 = "10.1.0.5", "10.2.0.7", "192.168.0.1", "192.168.0.1", "192.168.0.2"
DB_SVC, WEB_SVC = "10.96.0.10", "10.96.0.20"


def populate(fake: FakeKube) -> None:
    """Two nodes; web (Deployment) on node-1, db (StatefulSet) on node-2, a db Service,
    a hostNetwork agent (DaemonSet) on node-1."""
    fake.add("nodes", cluster.node("node-1", NODE1))
    fake.add("nodes", cluster.node("node-2", NODE2))
    fake.add("deployments", cluster.workload("Deployment", "web"))
    fake.add("replicasets", cluster.workload("ReplicaSet", "web-5d", owner=("Deployment", "web")))
    fake.add("statefulsets", cluster.workload("StatefulSet", "db", namespace="data"))
    fake.add("daemonsets", cluster.workload("DaemonSet", "agent", namespace="kube-system"))
    fake.add("pods", cluster.pod("web-5d-x", ips=(WEB,), node="node-1", owner=("ReplicaSet", "web-5d"),
                                 container_ids={"c-web": "main"}, labels={"app": "web", "tier": "x"}))  # fmt: skip
    fake.add("pods", cluster.pod("db-0", namespace="data", ips=(DB,), node="node-2",
                                 owner=("StatefulSet", "db"), containers=("postgres",),
                                 container_ids={"c-db": "postgres"}, labels={"app": "db"}))  # fmt: skip
    fake.add("pods", cluster.pod("agent-q", namespace="kube-system", ips=(AGENT,), node="node-1",
                                 owner=("DaemonSet", "agent"), host_network=True,
                                 container_ids={"c-agent": "main"}))  # fmt: skip
    fake.add("services", cluster.service("db", namespace="data", cluster_ips=(DB_SVC,)))
    fake.add("endpointslices", cluster.endpointslice("db-abc", "db", (DB,), namespace="data"))
    fake.add("services", cluster.service("web", cluster_ips=(WEB_SVC,)))
    fake.add("endpointslices", cluster.endpointslice("web-abc", "web", (WEB,)))


def _dedup_dropped(env: Env) -> float | None:
    """Reports dropped as cross-node duplicates. Counted once a raw batch's output is
    acknowledged: for a group of batches (``Pipeline.handle_flows``), after the whole
    group, which may be after its records were delivered to a subscriber."""
    return env.replica.rt.registry.get_sample_value("flowscope_enricher_dedup_dropped_total")


@dataclass
class Env:
    fake: FakeKube
    replica: Replica
    nc: NATS
    flows: Collected


@pytest.fixture
async def env(nats_srv: NatsServer, clean_nc: NATS, tmp_path: Path) -> AsyncIterator[Env]:
    fake = FakeKube()
    await fake.start()
    populate(fake)
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    settings = make_settings(nats_srv.url, **{"kubernetes.mode": "kubernetes",
                                               "kubeconfig": kubeconfig,
                                               "kubernetes.page_size": 3,
                                               "kubernetes.deleted_grace": 30})  # fmt: skip
    replica = start_replica(settings)
    await replica.ready()
    flows = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    yield Env(fake, replica, clean_nc, flows)
    assert await replica.stop() == 0
    await fake.stop()


async def send(env: Env, node: str, flows: list[dict] = (), sockets: list[dict] = ()) -> None:  # type: ignore[assignment]
    if sockets:
        await publish_raw(env.nc, codec.RAW_SOCKET, subjects.raw_sockets(node), list(sockets))
    if flows:
        await publish_raw(env.nc, codec.RAW_FLOW, subjects.raw_flows(node), list(flows))


async def one(env: Env, **match: Any) -> dict[str, Any]:
    def found(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in recs if all(r.get(k) == v for k, v in match.items())]

    await env.flows.wait_for(lambda recs: bool(found(recs)))
    (rec,) = found(env.flows.records)
    return records.validate_flow(rec)


def subject_of(env: Env, rec: dict[str, Any]) -> str:
    return next(s for s, _, recs in env.flows.messages if rec in recs)


WEB_KEYS = {
    "kind": "pod", "k8s.namespace.name": "shop", "k8s.pod.name": "web-5d-x",
    "k8s.pod.uid": "uid-shop-web-5d-x", "k8s.container.name": "main", "k8s.node.name": "node-1",
    "k8s.replicaset.name": "web-5d", "k8s.deployment.name": "web",
    "k8s.workload.kind": "Deployment", "k8s.workload.name": "web", "k8s.pod.labels.app": "web",
}  # fmt: skip


def side(rec: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) + 1 :]: v for k, v in rec.items() if k.startswith(prefix + ".")}


async def test_pod_to_service(env: Env) -> None:
    await send(env, "node-1",
               sockets=[raw_socket("node-1", "connect", WEB, 41000, DB_SVC, 5432, 100, "psql", "c-web")],
               flows=[raw_flow("node-1", WEB, DB_SVC, 41000, 5432, initiator=True)])  # fmt: skip
    rec = await one(env, **{"source.port": 41000})
    assert subject_of(env, rec) == "flowscope.flows.shop.data"
    src = side(rec, "source")
    assert {k: src[k] for k in WEB_KEYS} == WEB_KEYS
    assert "k8s.pod.labels.tier" not in src  # not on the allow-list
    assert (src["address"], src["port"], src["process.pid"], src["process.executable.name"],
            src["container.id"]) == (WEB, 41000, 100, "psql", "c-web")  # fmt: skip
    assert side(rec, "destination") == {
        "address": DB_SVC, "port": 5432, "kind": "service", "k8s.namespace.name": "data",
        "k8s.service.name": "db",
    }  # fmt: skip
    assert rec["flow.direction"] == "forward" and rec["observer.node.name"] == "node-1"
    assert (rec["flow.bytes.delta"], rec["flow.packets.delta"], rec["flow.reverse.bytes.delta"],
            rec["flow.reverse.packets.delta"]) == (1000, 10, 5000, 8)  # fmt: skip
    assert rec["network.type"] == "ipv4" and rec["network.transport"] == "tcp"
    assert rec["flow.end_reason"] == "active_timeout" and rec["flow.tcp.flags.tags"] == [
        "SYN",
        "ACK",
    ]


async def test_pod_to_pod_across_nodes_merged_with_both_processes(env: Env) -> None:
    # Both nodes' socket events and both reports (node-2 oriented the other way).
    await send(env, "node-2",
               sockets=[raw_socket("node-2", "accept", DB, 5432, WEB, 42000, 200, "postgres", "c-db")],
               flows=[raw_flow("node-2", DB, WEB, 5432, 42000, bytes=5000, packets=8,
                               rbytes=1000, rpackets=10)])  # fmt: skip
    await send(env, "node-1",
               sockets=[raw_socket("node-1", "connect", WEB, 42000, DB, 5432, 100, "psql", "c-web")],
               flows=[raw_flow("node-1", WEB, DB, 42000, 5432)])  # fmt: skip
    # A sentinel after both: once it is out, both reports have been handled (in order).
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, "203.0.113.1", 1, 1)])
    await one(env, **{"destination.address": "203.0.113.1"})
    merged = [r for r in env.flows.records if r["destination.address"] == DB]
    assert len(merged) == 1, merged
    rec = records.validate_flow(merged[0])
    assert rec["flow.direction"] == "forward" and rec["source.address"] == WEB
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (1000, 5000)  # not doubled
    assert (rec["source.process.pid"], rec["source.process.executable.name"]) == (100, "psql")
    assert (rec["destination.process.pid"], rec["destination.process.executable.name"]) == (
        200,
        "postgres",
    )
    dst = side(rec, "destination")
    assert {k: dst[k] for k in ("kind", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name",
                                "k8s.node.name", "k8s.statefulset.name", "k8s.workload.kind",
                                "k8s.service.name", "k8s.pod.labels.app")} == {
        "kind": "pod", "k8s.namespace.name": "data", "k8s.pod.name": "db-0",
        "k8s.container.name": "postgres", "k8s.node.name": "node-2", "k8s.statefulset.name": "db",
        "k8s.workload.kind": "StatefulSet", "k8s.service.name": "db", "k8s.pod.labels.app": "db",
    }  # fmt: skip
    await eventually(lambda: _dedup_dropped(env) == 1, within=10, what="dedup_dropped == 1")


async def test_service_across_nodes_named_when_the_backends_node_reports(env: Env) -> None:
    """db-0 (node-2) dials the web Service; node-2 DNATs it to web-5d-x (node-1). The
    merge keeps node-1's report (web's end is the smaller), which has no pre-NAT address:
    the client's connect event still names the Service, the name db-0 resolved and its
    process."""
    await publish_raw(env.nc, codec.RAW_DNS, subjects.raw_dns("node-2"), [{
        "observer": "node-2", "time_ns": 1, "id": 5, "qname": "web.shop.svc.cluster.local",
        "qtype": "A", "rcode": "NOERROR", "client": DB, "client_port": 5355, "server": DB_SVC,
        "server_port": 53, "latency_ns": 1000, "answers": [
            {"name": "web.shop.svc.cluster.local", "type": "A", "ttl": 60, "data": WEB_SVC}],
    }])  # fmt: skip
    await send(env, "node-2",
               sockets=[raw_socket("node-2", "connect", DB, 44000, WEB_SVC, 80, 300, "curl", "c-db")])  # fmt: skip
    await send(env, "node-1",
               sockets=[raw_socket("node-1", "accept", WEB, 8080, DB, 44000, 100, "nginx", "c-web")],
               flows=[raw_flow("node-1", WEB, DB, 8080, 44000, bytes=5000, packets=8,
                               rbytes=1000, rpackets=10)])  # fmt: skip
    await send(env, "node-2", flows=[raw_flow("node-2", DB, WEB, 44000, 8080, initiator=True,
                                              nat_dst=WEB_SVC, nat_dport=80)])  # fmt: skip
    await send(env, "node-2", flows=[raw_flow("node-2", DB, "203.0.113.2", 1, 1)])  # sentinel
    await one(env, **{"destination.address": "203.0.113.2"})
    (rec,) = [r for r in env.flows.records if r["source.port"] == 44000]
    rec = records.validate_flow(rec)
    assert rec["observer.node.name"] == "node-1" and rec["flow.direction"] == "forward"
    assert subject_of(env, rec) == "flowscope.flows.data.shop"
    assert (rec["source.address"], rec["source.k8s.pod.name"]) == (DB, "db-0")
    assert (rec["source.process.pid"], rec["source.process.executable.name"]) == (300, "curl")
    assert (rec["destination.address"], rec["destination.port"]) == (WEB, 8080)
    assert (rec["destination.process.pid"], rec["destination.k8s.pod.name"]) == (100, "web-5d-x")
    assert rec["destination.k8s.service.name"] == "web"
    assert rec["destination.domain"] == "web.shop.svc.cluster.local"
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (1000, 5000)


async def test_pod_to_external_with_dns_name(env: Env) -> None:
    await publish_raw(env.nc, codec.RAW_DNS, subjects.raw_dns("node-1"), [{
        "observer": "node-1", "time_ns": 1, "id": 3, "qname": "api.stripe.example", "qtype": "A",
        "rcode": "NOERROR", "client": WEB, "client_port": 5353, "server": DB_SVC,
        "server_port": 53, "latency_ns": 900_000, "answers": [
            {"name": "api.stripe.example", "type": "CNAME", "ttl": 60, "data": "lb.stripe.example"},
            {"name": "lb.stripe.example", "type": "A", "ttl": 60, "data": "198.51.100.20"}],
    }])  # fmt: skip
    await send(
        env, "node-1", flows=[raw_flow("node-1", WEB, "198.51.100.20", 43000, 443, initiator=True)]
    )
    rec = await one(env, **{"destination.address": "198.51.100.20"})
    assert subject_of(env, rec) == "flowscope.flows.shop._external"
    assert (
        rec["destination.kind"] == "external" and rec["destination.domain"] == "api.stripe.example"
    )
    assert rec["source.k8s.pod.name"] == "web-5d-x"


async def test_dns_record_published_enriched(env: Env) -> None:
    dns = await collect(env.nc, subjects.DNS_ALL, codec.DNS)
    await publish_raw(env.nc, codec.RAW_DNS, subjects.raw_dns("node-1"), [{
        "observer": "node-1", "time_ns": 5, "id": 4, "qname": "db.data.svc.cluster.local",
        "qtype": "A", "rcode": "NOERROR", "client": WEB, "client_port": 5354, "server": DB,
        "server_port": 53, "latency_ns": 1000, "answers": [
            {"name": "db.data.svc.cluster.local", "type": "A", "ttl": 5, "data": DB_SVC}],
    }])  # fmt: skip
    await dns.wait_for(lambda r: len(r) == 1)
    (subject, _, (rec,)) = dns.messages[0]
    assert subject == "flowscope.dns.shop"
    records.validate_dns(rec)
    assert rec["dns.question.name"] == "db.data.svc.cluster.local" and rec["dns.id"] == 4
    assert rec["source.k8s.pod.name"] == "web-5d-x" and rec["destination.k8s.pod.name"] == "db-0"
    assert rec["dns.answers"] == [{"name": "db.data.svc.cluster.local", "type": "A", "ttl": 5,
                                   "data": DB_SVC}]  # fmt: skip


async def test_host_network_pod_named_by_its_process_container(env: Env) -> None:
    await send(env, "node-1",
               sockets=[raw_socket("node-1", "connect", AGENT, 44000, DB, 9100, 300, "agent", "c-agent")],
               flows=[raw_flow("node-1", AGENT, DB, 44000, 9100),
                      raw_flow("node-1", AGENT, DB, 44001, 9100)])  # fmt: skip
    refined = await one(env, **{"source.port": 44000})
    plain = await one(env, **{"source.port": 44001})
    assert (refined["source.kind"], refined["source.k8s.pod.name"], refined["source.k8s.namespace.name"],
            refined["source.k8s.workload.kind"], refined["source.k8s.daemonset.name"]) == (
        "pod", "agent-q", "kube-system", "DaemonSet", "agent")  # fmt: skip
    assert subject_of(env, refined) == "flowscope.flows.kube-system.data"
    assert (plain["source.kind"], plain["source.k8s.node.name"]) == ("node", "node-1")
    assert subject_of(env, plain) == "flowscope.flows._node.data"


async def test_pod_deleted_moments_before_its_last_flow(env: Env) -> None:
    env.fake.delete("pods", "shop", "web-5d-x")
    registry = env.replica.rt.registry
    key = ("flowscope_enricher_informer_events_total", {"resource": "pods", "type": "DELETED"})
    async with asyncio.timeout(10):
        while not registry.get_sample_value(*key):  # noqa: ASYNC110 - metric polling
            await asyncio.sleep(0.02)
    await send(
        env,
        "node-1",
        flows=[raw_flow("node-1", WEB, DB_SVC, 45000, 5432, end_reason="end_of_flow_detected")],
    )
    rec = await one(env, **{"source.port": 45000})
    assert rec["source.k8s.pod.name"] == "web-5d-x" and rec["source.k8s.deployment.name"] == "web"


async def test_identities_built_once_synced_before_any_flow(env: Env) -> None:
    # Every address a pod (not hostNetwork), service or node holds: web, db, the db and
    # web Services and the two nodes (the hostNetwork agent's address is node-1's).
    registry = env.replica.rt.registry

    async def identities(n: int) -> None:
        gauge = "flowscope_enricher_identities"  # set every 2 s
        while registry.get_sample_value(gauge) != n:  # noqa: ASYNC110 - metric polling
            await asyncio.sleep(0.1)

    await asyncio.wait_for(identities(6), 10)
    env.fake.add("pods", cluster.pod("late", namespace="batch", ips=("10.1.0.99",), node="node-1"))
    await asyncio.wait_for(identities(7), 10)
    assert not env.flows.records  # no flow asked for any of them


async def test_changes_through_the_api_show_in_later_records(env: Env) -> None:
    env.fake.modify("pods", cluster.pod("web-5d-x", ips=(WEB,), node="node-1",
                                        owner=("ReplicaSet", "web-5d"), labels={"app": "web-v2"}))  # fmt: skip
    env.fake.add("pods", cluster.pod("late", namespace="batch", ips=("10.1.0.99",), node="node-1"))
    env.fake.add("services", cluster.service("edge", namespace="batch", lb_ips=("203.0.113.50",)))
    await asyncio.sleep(0.3)
    # Then the watch streams break and history is compacted: the informers must re-LIST.
    env.fake.break_watches()
    env.fake.add("nodes", cluster.node("node-3", "192.168.0.3"))
    env.fake.compact()
    await asyncio.sleep(0.5)
    await send(env, "node-1", flows=[
        raw_flow("node-1", WEB, DB_SVC, 46000, 5432, initiator=True),
        raw_flow("node-1", "10.1.0.99", "203.0.113.50", 46001, 443, initiator=True),
        raw_flow("node-1", "10.1.0.99", "192.168.0.3", 46002, 10250, initiator=True),
    ])  # fmt: skip
    assert (await one(env, **{"source.port": 46000}))["source.k8s.pod.labels.app"] == "web-v2"
    late = await one(env, **{"source.port": 46001})
    assert (late["source.k8s.pod.name"], late["destination.kind"], late["destination.k8s.service.name"]) == (
        "late", "service", "edge")  # fmt: skip
    assert subject_of(env, late) == "flowscope.flows.batch.batch"
    node3 = await one(env, **{"source.port": 46002})
    assert (node3["destination.kind"], node3["destination.k8s.node.name"]) == ("node", "node-3")


async def test_api_outage_keeps_metadata_reports_staleness_and_recovers(env: Env) -> None:
    rt = env.replica.rt

    def kubernetes_check() -> tuple[bool, str]:
        return rt.health.checks["kubernetes"]

    await env.fake.stop()
    async with asyncio.timeout(15):
        while "unreachable" not in kubernetes_check()[1]:  # noqa: ASYNC110 - health polling
            await asyncio.sleep(0.1)
    assert kubernetes_check()[0] is True  # still serving the last known metadata
    assert (
        rt.registry.get_sample_value("flowscope_enricher_kubernetes_staleness_seconds") or 0
    ) > 0
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, DB_SVC, 47000, 5432, initiator=True)])
    rec = await one(env, **{"source.port": 47000})
    assert rec["source.k8s.pod.name"] == "web-5d-x" and rec["destination.k8s.service.name"] == "db"
    await env.fake.start()  # the API returns, with a change made meanwhile
    env.fake.add("pods", cluster.pod("after-outage", ips=("10.1.0.77",), node="node-1"))
    async with asyncio.timeout(20):
        while kubernetes_check()[1] != "synced":  # noqa: ASYNC110 - health polling
            await asyncio.sleep(0.1)
    await send(env, "node-1", flows=[raw_flow("node-1", "10.1.0.77", DB_SVC, 47001, 5432)])
    assert (await one(env, **{"source.port": 47001}))["source.k8s.pod.name"] == "after-outage"


async def test_merge_window_lets_the_other_nodes_socket_event_arrive_first(env: Env) -> None:
    # The flow report comes first; node-2's socket event only after it, within the window.
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, DB, 48000, 5432, initiator=True)],
               sockets=[raw_socket("node-1", "connect", WEB, 48000, DB, 5432, 100, "psql", "c-web")])  # fmt: skip
    await asyncio.sleep(0.05)
    await send(env, "node-2",
               sockets=[raw_socket("node-2", "accept", DB, 5432, WEB, 48000, 200, "postgres", "c-db")])  # fmt: skip
    rec = await one(env, **{"source.port": 48000})
    assert (rec["source.process.pid"], rec["destination.process.pid"]) == (100, 200)


OUT = "203.0.113.1"


async def test_a_connection_seen_by_its_home_and_another_node_is_published_once(env: Env) -> None:
    """One end's home known (web → the outside), or both ends at home on node-1: a second
    node's report (an egress gateway, a node the traffic is routed through) is dropped,
    the home's kept, counters not doubled."""
    # both nodes run collectors
    await send(env, "node-1", sockets=[
        raw_socket("node-1", "connect", WEB, 41000, OUT, 443, 100, "curl", "c-web")])  # fmt: skip
    await send(env, "node-2", sockets=[
        raw_socket("node-2", "accept", DB, 5432, "10.9.9.9", 1, 200, "postgres", "c-db")])  # fmt: skip
    # web (node-1) → outside, leaving through node-2: node-2 reports it first
    await send(env, "node-2", flows=[raw_flow("node-2", WEB, OUT, 41000, 443, initiator=True)])
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, OUT, 41000, 443, initiator=True)])
    # web → node-1's own address (its agent): both ends on node-1, node-2 reports it too
    await send(env, "node-1", flows=[raw_flow("node-1", WEB, AGENT, 41001, 9100)])
    await send(env, "node-2", flows=[raw_flow("node-2", AGENT, WEB, 9100, 41001)])
    # a sentinel after them: once it is out, every report before it was handled
    await send(env, "node-2", flows=[raw_flow("node-2", DB, "198.51.100.9", 1, 1)])
    await one(env, **{"destination.address": "198.51.100.9"})
    outside = [r for r in env.flows.records if r["destination.address"] == OUT]
    assert len(outside) == 1, outside
    rec = records.validate_flow(outside[0])
    assert rec["observer.node.name"] == "node-1" and rec["source.process.pid"] == 100
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (1000, 5000)
    same_node = [r for r in env.flows.records if 41001 in (r["source.port"], r["destination.port"])]
    assert [r["observer.node.name"] for r in same_node] == ["node-1"]
    await eventually(lambda: _dedup_dropped(env) == 2, within=10, what="dedup_dropped == 2")
