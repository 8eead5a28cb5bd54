"""One connection through a DNAT'ed "Service" is one flow: the real collector process in
a routed namespace node with a kube-proxy-like nftables DNAT rule (nat_node.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import (
    CollectorProcess,
    collector_inside,
    nats_inside,
)
from tests.privileged.collector.nat_node import (
    TCP_PORT,
    TCP_TARGET,
    UDP_PORT,
    UDP_TARGET,
    VIP4,
    VIP6,
    NatNode,
)
from tests.privileged.collector.node import Capture, finish, wait_listening
from tests.privileged.collector.test_service import Records
from tests.support import nats_server


@pytest.fixture(scope="module")
def nats_in_node(nat_node: NatNode) -> Iterator[nats_server.NatsServer]:
    with nats_inside(nat_node) as server:
        yield server


@pytest.fixture(scope="module")
def collector(
    nat_node: NatNode, nats_in_node: nats_server.NatsServer
) -> Iterator[CollectorProcess]:
    with collector_inside(nat_node, nats_in_node.url) as proc:
        yield proc


async def subscribed(
    nat_node: NatNode, url: str, schema: codec.Schema, subject: str
) -> AsyncIterator[Records]:
    """Raw records of one kind from the collector in the node, for the test's duration."""
    import nats

    with nat_node.inside():
        nc = await nats.connect(url)
    got = Records(schema)
    await nc.subscribe(subject, cb=got.handler)
    yield got
    await nc.close()


@pytest.fixture
async def flows(nat_node: NatNode, nats_in_node: nats_server.NatsServer) -> AsyncIterator[Records]:
    async for got in subscribed(
        nat_node, nats_in_node.url, codec.RAW_FLOW, subjects.raw_flows("testnode")
    ):
        yield got


@pytest.fixture
async def dns(nat_node: NatNode, nats_in_node: nats_server.NatsServer) -> AsyncIterator[Records]:
    async for got in subscribed(
        nat_node, nats_in_node.url, codec.RAW_DNS, subjects.raw_dns("testnode")
    ):
        yield got


@pytest.fixture
def capture(nat_node: NatNode) -> Iterator[Capture]:
    """Ground truth on the client's veth: its requests (to the Service address) and the
    replies it gets back (un-NATed); NAT keeps the lengths, so these are the bytes."""
    with nat_node.inside():
        cap = Capture(nat_node.pods[0].host_if)
    yield cap


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
async def test_tcp_and_udp_through_the_service_are_one_flow_each(
    nat_node: NatNode, collector: CollectorProcess, flows: Records, capture: Capture, v6: bool
) -> None:
    client, backend = nat_node.pods
    vip, caddr, baddr = (VIP6, client.ip6, backend.ip6) if v6 else (VIP4, client.ip4, backend.ip4)
    srv = nat_node.start(backend, "tcp-server", baddr, str(TCP_TARGET), "30000")
    wait_listening(srv)
    sport = int(finish(nat_node.start(client, "tcp-client", vip, str(TCP_PORT), "200000"))["sport"])
    assert finish(srv)["received"] == 200000
    echo = nat_node.start(backend, "udp-echo", baddr, str(UDP_TARGET), "5")
    wait_listening(echo)
    usport = int(nat_node.run(client, "udp-client", vip, str(UDP_PORT), "5", "120")["sport"])
    finish(echo)

    ours = {(6, sport), (17, usport)}
    got = await flows.wait_for(
        lambda r: (r["proto"], r["sport"]) in ours or (r["proto"], r["dport"]) in ours, within=15
    )
    capture.stop()
    for proto, port, vport, target in (
        (6, sport, TCP_PORT, TCP_TARGET),
        (17, usport, UDP_PORT, UDP_TARGET),
    ):
        records = [r for r in got if r["proto"] == proto and port in (r["sport"], r["dport"])]
        # One flow: every report of the connection (normally one) is client → backend,
        # with the Service address the client dialled; no one-way half is left.
        assert {(r["src"], r["sport"], r["dst"], r["dport"]) for r in records} == {
            (caddr, port, baddr, target)
        }, records
        assert {(r["nat_dst"], r["nat_dport"]) for r in records} == {(vip, vport)}
        request, reply = (proto, caddr, vip, port, vport), (proto, vip, caddr, vport, port)
        assert sum(r["packets"] for r in records) == capture.packets[request] > 0
        assert sum(r["bytes"] for r in records) == capture.bytes[request]
        assert sum(r["rpackets"] for r in records) == capture.packets[reply] > 0
        assert sum(r["rbytes"] for r in records) == capture.bytes[reply]
    tcp = [r for r in got if r["proto"] == 6]
    assert any(r["initiator"] for r in tcp) and tcp[-1]["end_reason"] == "end_of_flow_detected"
    assert collector.metric("flowscope_collector_nat_pairs_total") >= 2
    assert collector.metric("flowscope_collector_nat_lookups_total") >= 2


async def test_connection_over_several_drains_is_looked_up_once(
    nat_node: NatNode, collector: CollectorProcess, flows: Records, capture: Capture
) -> None:
    """Every interval's report of a long connection is paired, or rewritten when a drain
    fell between a segment and its ACK (the collector drains every second here);
    conntrack is asked once, the rest comes from the cache."""
    client, backend = nat_node.pods

    def joined() -> float:  # both halves joined, or one half alone (a drain between them)
        return collector.metric("flowscope_collector_nat_pairs_total") + collector.metric(
            "flowscope_collector_nat_rewritten_total"
        )

    lookups, before = collector.metric("flowscope_collector_nat_lookups_total"), joined()
    srv = nat_node.start(backend, "tcp-server", backend.ip4, str(TCP_TARGET), "4000")
    wait_listening(srv)
    cli = nat_node.start(client, "tcp-client", VIP4, str(TCP_PORT), "30000", "3", "1.2")
    sport = int(finish(cli)["sport"])
    finish(srv)
    records = await flows.wait_for(
        lambda r: r["proto"] == 6 and sport in (r["sport"], r["dport"]), within=15
    )
    capture.stop()
    assert len(records) >= 3, records  # the connection spans several drains
    assert {(r["src"], r["sport"], r["dst"], r["dport"], r["nat_dst"]) for r in records} == {
        (client.ip4, sport, backend.ip4, TCP_TARGET, VIP4)
    }
    request, reply = (6, client.ip4, VIP4, sport, TCP_PORT), (6, VIP4, client.ip4, TCP_PORT, sport)
    assert sum(r["packets"] for r in records) == capture.packets[request]
    assert sum(r["bytes"] for r in records) == capture.bytes[request]
    assert sum(r["rpackets"] for r in records) == capture.packets[reply]
    assert sum(r["rbytes"] for r in records) == capture.bytes[reply]
    assert collector.metric("flowscope_collector_nat_lookups_total") - lookups == 1
    assert joined() - before == len(records)


DNS_VIP4 = "10.209.100.53"  # a cluster DNS Service address, DNAT'ed to pod B port 53


async def test_dns_through_the_service_is_one_exchange_with_latency(
    nat_node: NatNode, collector: CollectorProcess, dns: Records
) -> None:
    """The query is captured going to the Service address, the answer coming from the DNS
    pod (un-NATed only after TC): paired into one event naming the Service, and no
    "unanswered" twin of the query once the 5 s query timeout has passed."""
    client, backend = nat_node.pods
    nat_node.hx(
        "nft", "add", "rule", "inet", "natpair", "prerouting",
        "ip", "daddr", DNS_VIP4, "udp", "dport", "53", "dnat", "ip", "to", f"{backend.ip4}:53",
    )  # fmt: skip
    srv = nat_node.start(backend, "dns-server", backend.ip4, "53", "1")
    wait_listening(srv)
    answer = nat_node.run(client, "dns-query", DNS_VIP4, "53", "svc.natpair.test")
    finish(srv)
    (event,) = await dns.wait_for(lambda r: r["qname"] == "svc.natpair.test")
    assert (event["client"], event["server"], event["server_port"]) == (client.ip4, DNS_VIP4, 53)
    assert (event["id"], event["rcode"]) == (answer["id"], "NOERROR")
    assert event["answers"] == [
        {"name": "svc.natpair.test", "type": "A", "ttl": 60, "data": "10.203.0.99"}
    ]
    assert event["latency_ns"] > 0
    await asyncio.sleep(6.5)  # past the query timeout (5 s) and one more expiry pass
    assert [r for r in dns.records if r["qname"] == "svc.natpair.test"] == [event]
