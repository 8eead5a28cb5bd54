"""Local mode (no Kubernetes): this machine's addresses are `host`, processes still joined."""

from __future__ import annotations

import asyncio

from flowscope.core import codec, records, subjects
from flowscope.enricher.local import local_addresses
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    raw_socket,
    start_replica,
)
from tests.support.nats_server import NatsServer


async def test_local_mode_host_external_process_and_dns(
    nats_srv: NatsServer, clean_nc: NATS
) -> None:
    assert "127.0.0.1" in local_addresses()
    replica = start_replica(make_settings(nats_srv.url))
    await replica.ready()
    out = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    await publish_raw(clean_nc, codec.RAW_DNS, subjects.raw_dns("me"), [{
        "observer": "me", "time_ns": 1, "id": 7, "qname": "api.example.com.", "qtype": "A",
        "rcode": "NOERROR", "client": "127.0.0.1", "client_port": 5353, "server": "127.0.0.53",
        "server_port": 53, "answers": [
            {"name": "api.example.com", "type": "CNAME", "ttl": 30, "data": "edge.cdn.example"},
            {"name": "edge.cdn.example", "type": "A", "ttl": 30, "data": "192.0.2.80"},
        ],
    }])  # fmt: skip
    await publish_raw(clean_nc, codec.RAW_SOCKET, subjects.raw_sockets("me"), [
        raw_socket("me", "connect", "127.0.0.1", 40000, "192.0.2.80", 443, 321, "curl"),
    ])  # fmt: skip
    # The collector saw the reply first: src is the remote end, initiator unknown.
    await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("me"), [
        raw_flow("me", "192.0.2.80", "127.0.0.1", 443, 40000, bytes=5000, packets=8,
                 rbytes=1000, rpackets=10),
    ])  # fmt: skip
    (rec,) = await out.wait_for(lambda r: len(r) >= 1)
    records.validate_flow(rec)
    assert out.messages[0][0] == "flowscope.flows._host._external"
    assert rec["flow.direction"] == "forward"
    assert (rec["source.address"], rec["source.port"]) == ("127.0.0.1", 40000)
    assert (rec["destination.address"], rec["destination.port"]) == ("192.0.2.80", 443)
    assert rec["source.kind"] == "host" and rec["destination.kind"] == "external"
    # swapped orientation swaps the counters too
    assert (rec["flow.bytes.delta"], rec["flow.packets.delta"]) == (1000, 10)
    assert (rec["flow.reverse.bytes.delta"], rec["flow.reverse.packets.delta"]) == (5000, 8)
    assert rec["source.process.pid"] == 321
    assert rec["source.process.executable.name"] == "curl"
    assert rec["destination.domain"] == "api.example.com"
    assert rec["observer.node.name"] == "me"
    assert rec["network.type"] == "ipv4" and rec["network.transport"] == "tcp"
    assert rec["flow.tcp.flags.tags"] == ["SYN", "ACK"]
    assert rec["flow.community_id"].startswith("1:")
    registry = replica.rt.registry
    lag = ("flowscope_enricher_consumer_pending", {"consumer": "flow"})
    async with asyncio.timeout(10):  # the upkeep loop reads consumer info every 2 s
        while registry.get_sample_value(*lag) is None:  # noqa: ASYNC110 - metric polling
            await asyncio.sleep(0.1)
    assert registry.get_sample_value(*lag) == 0
    # the flow's source and the DNS exchange's client are this host: each counted once its
    # record's publish is acknowledged, the DNS record's perhaps after the flow's
    host = ("flowscope_enricher_lookups_total", {"result": "host"})
    async with asyncio.timeout(10):
        while registry.get_sample_value(*host) != 2:  # noqa: ASYNC110 - metric polling
            await asyncio.sleep(0.1)
    # the flow's source (the DNS client's join may hit a socket event that earlier tests
    # on this server published: the replica replays state_lookback of them)
    hits = registry.get_sample_value("flowscope_enricher_process_joins_total", {"result": "hit"})
    assert hits is not None and hits >= 1
    assert registry.get_sample_value("flowscope_enricher_dns_joins_total", {"result": "hit"}) == 1
    assert await replica.stop() == 0
