"""A pod's connection masqueraded on its way out of the node is one flow: the real
collector process in a routed namespace node whose uplink to an "outside" namespace
masquerades the pod's traffic with nftables (nat_node.py, SnatNode)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import (
    CollectorProcess,
    collector_inside,
    nats_inside,
)
from tests.privileged.collector.nat_node import (
    MASQ_PORTS,
    UPLINK,
    UPLINK4,
    UPLINK6,
    SnatNode,
)
from tests.privileged.collector.node import Capture, finish, wait_listening
from tests.privileged.collector.test_nat_pairing_kernel import subscribed
from tests.privileged.collector.test_service import Records
from tests.support import nats_server

TCP_PORT, UDP_PORT = 443, 5353


@pytest.fixture(scope="module")
def nats_in_snat_node(snat_node: SnatNode) -> Iterator[nats_server.NatsServer]:
    with nats_inside(snat_node) as server:
        yield server


@pytest.fixture(scope="module")
def collector(
    snat_node: SnatNode, nats_in_snat_node: nats_server.NatsServer
) -> Iterator[CollectorProcess]:
    with collector_inside(snat_node, nats_in_snat_node.url) as proc:
        yield proc


@pytest.fixture
async def flows(
    snat_node: SnatNode, nats_in_snat_node: nats_server.NatsServer
) -> AsyncIterator[Records]:
    async for got in subscribed(
        snat_node, nats_in_snat_node.url, codec.RAW_FLOW, subjects.raw_flows("testnode")
    ):
        yield got


@pytest.fixture
def captures(snat_node: SnatNode) -> Iterator[tuple[Capture, Capture]]:
    """Ground truth on the pod's veth (its requests and the replies it gets back,
    un-NATed; NAT keeps the lengths, so these are the bytes) and on the uplink (where
    the translated source port is seen)."""
    with snat_node.inside():
        caps = Capture(snat_node.pods[0].host_if), Capture(UPLINK)
    yield caps


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
async def test_tcp_and_udp_to_the_outside_are_one_flow_each(
    snat_node: SnatNode,
    collector: CollectorProcess,
    flows: Records,
    captures: tuple[Capture, Capture],
    v6: bool,
) -> None:
    (pod,), out = snat_node.pods, snat_node.outside
    assert out is not None
    paddr, oaddr, uplink = (pod.ip6, out.ip6, UPLINK6) if v6 else (pod.ip4, out.ip4, UPLINK4)
    pairs_before = collector.metric("flowscope_collector_nat_pairs_total")
    srv = snat_node.start(out, "tcp-server", oaddr, str(TCP_PORT), "150000")
    wait_listening(srv)
    sport = int(finish(snat_node.start(pod, "tcp-client", oaddr, str(TCP_PORT), "60000"))["sport"])
    assert finish(srv)["peer"][0] == uplink  # the server saw the node, not the pod
    echo = snat_node.start(out, "udp-echo", oaddr, str(UDP_PORT), "5")
    wait_listening(echo)
    usport = int(snat_node.run(pod, "udp-client", oaddr, str(UDP_PORT), "5", "300")["sport"])
    finish(echo)

    # Every record touching the outside address: a one-way half left unpaired (the
    # replies to the node's address) would be among them.
    got = await flows.wait_for(lambda r: oaddr in (r["src"], r["dst"]), within=15)
    veth, up = captures
    veth.stop()
    up.stop()
    for proto, port, pport in ((6, sport, TCP_PORT), (17, usport, UDP_PORT)):
        records = [r for r in got if r["proto"] == proto]
        assert {(r["src"], r["sport"], r["dst"], r["dport"]) for r in records} == {
            (paddr, port, oaddr, pport)
        }, records
        # The translated source: the uplink's address and the port seen on the uplink.
        (translated,) = {fid[3] for fid in up.packets if fid[:3] == (proto, uplink, oaddr)}
        assert MASQ_PORTS[0] <= translated <= MASQ_PORTS[1] and translated != port
        assert {(r["nat_src"], r["nat_sport"]) for r in records} == {(uplink, translated)}
        assert all("nat_dst" not in r for r in records)
        request, reply = (proto, paddr, oaddr, port, pport), (proto, oaddr, paddr, pport, port)
        assert sum(r["packets"] for r in records) == veth.packets[request] > 0
        assert sum(r["bytes"] for r in records) == veth.bytes[request]
        assert sum(r["rpackets"] for r in records) == veth.packets[reply] > 0
        assert sum(r["rbytes"] for r in records) == veth.bytes[reply]
    tcp = [r for r in got if r["proto"] == 6]
    assert any(r["initiator"] for r in tcp) and tcp[-1]["end_reason"] == "end_of_flow_detected"
    assert collector.metric("flowscope_collector_nat_pairs_total") - pairs_before >= 2


async def test_connection_over_several_drains_is_looked_up_once(
    snat_node: SnatNode,
    collector: CollectorProcess,
    flows: Records,
    captures: tuple[Capture, Capture],
) -> None:
    """Every interval's report of a long masqueraded connection is paired, or rewritten
    when a drain fell between a segment and its ACK (the collector drains every second
    here); conntrack is asked once, the rest comes from the cache."""
    (pod,), out = snat_node.pods, snat_node.outside
    assert out is not None

    def joined() -> float:  # both halves joined, or one half alone (a drain between them)
        return collector.metric("flowscope_collector_nat_pairs_total") + collector.metric(
            "flowscope_collector_nat_rewritten_total"
        )

    lookups, before = collector.metric("flowscope_collector_nat_lookups_total"), joined()
    srv = snat_node.start(out, "tcp-server", out.ip4, str(TCP_PORT + 1), "4000")
    wait_listening(srv)
    cli = snat_node.start(pod, "tcp-client", out.ip4, str(TCP_PORT + 1), "30000", "3", "1.2")
    sport = int(finish(cli)["sport"])
    finish(srv)
    records = await flows.wait_for(lambda r: out.ip4 in (r["src"], r["dst"]), within=15)
    veth, up = captures
    veth.stop()
    up.stop()
    assert len(records) >= 3, records  # the connection spans several drains
    (translated,) = {fid[3] for fid in up.packets if fid[:3] == (6, UPLINK4, out.ip4)}
    assert {
        (r["src"], r["sport"], r["dst"], r["dport"], r["nat_src"], r["nat_sport"]) for r in records
    } == {(pod.ip4, sport, out.ip4, TCP_PORT + 1, UPLINK4, translated)}
    request = (6, pod.ip4, out.ip4, sport, TCP_PORT + 1)
    reply = (6, out.ip4, pod.ip4, TCP_PORT + 1, sport)
    assert sum(r["packets"] for r in records) == veth.packets[request]
    assert sum(r["bytes"] for r in records) == veth.bytes[request]
    assert sum(r["rpackets"] for r in records) == veth.packets[reply]
    assert sum(r["rbytes"] for r in records) == veth.bytes[reply]
    assert collector.metric("flowscope_collector_nat_lookups_total") - lookups == 1
    assert joined() - before == len(records)
