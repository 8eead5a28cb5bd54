"""A UDP socket's close (the collector's ``close`` with proto 17 and an unspecified
remote) through a running enricher: the socket's entries are forgotten after the grace, so
a later flow on its 5-tuple (a reused port) is not named after the closed socket's
process; an open socket's entry stays."""

from __future__ import annotations

from flowscope.core import codec, subjects
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
from tests.support.waiting import eventually


async def test_a_udp_close_forgets_the_sockets_entries(
    nats_srv: NatsServer, clean_nc: NATS
) -> None:
    replica = start_replica(make_settings(nats_srv.url, **{"join.socket_grace": 0}))
    await replica.ready()
    try:
        out = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
        await publish_raw(clean_nc, codec.RAW_SOCKET, subjects.raw_sockets("me"), [
            raw_socket("me", "udp", "127.0.0.1", 40000, "192.0.2.53", 53, 321, "dig", proto=17),
            raw_socket("me", "udp", "127.0.0.1", 40000, "192.0.2.54", 53, 321, "dig", proto=17),
            raw_socket("me", "udp", "127.0.0.1", 40001, "192.0.2.53", 53, 322, "resolver", proto=17),
            raw_socket("me", "close", "127.0.0.1", 40000, "0.0.0.0", 0, 321, "dig", proto=17),
        ])  # fmt: skip

        # the upkeep loop's expiry leaves the open socket's entry only
        gauge = "flowscope_enricher_sockets"
        await eventually(lambda: replica.rt.registry.get_sample_value(gauge) == 1, 15, "expired")
        await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("me"), [
            raw_flow("me", "127.0.0.1", "192.0.2.53", 40000, 53, proto=17, tcp_flags=0),
            raw_flow("me", "127.0.0.1", "192.0.2.53", 40001, 53, proto=17, tcp_flags=0),
        ])  # fmt: skip
        recs = await out.wait_for(lambda r: len(r) >= 2)
        by_port = {rec["source.port"]: rec for rec in recs}
        assert "source.process.pid" not in by_port[40000]
        assert by_port[40001]["source.process.pid"] == 322
    finally:
        assert await replica.stop() == 0
