"""The NATS server restarts mid-stream: the enricher reconnects and carries on, losing
nothing, its state feeds subscribed again; restarted on an empty store, the enricher
makes its streams and consumers again; a connection nats-py closes for good stops it."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import nats
import nats.errors
import pytest
from flowscope.core import codec, subjects
from flowscope.enricher import consuming
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    Collected,
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    raw_socket,
    start_replica,
)
from tests.support import nats_server


async def test_enricher_survives_a_nats_restart() -> None:
    server = nats_server.start()
    port, store = server.port, server.store_dir
    replica = start_replica(make_settings(server.url, **{"nats.reconnect_wait_max": 0.2}))
    try:
        await replica.ready()
        client = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        out = await collect(client, subjects.FLOWS_ALL, codec.FLOW)
        flows = subjects.raw_flows("node-r")
        await publish_raw(
            client, codec.RAW_FLOW, flows, [raw_flow("node-r", "127.0.0.1", "192.0.2.9", 1, 2)]
        )
        await out.wait_for(lambda recs: len(recs) == 1)
        server.stop()  # same store and port: JetStream state survives, like a pod restart
        server = nats_server.start(port=port, store_dir=store)
        second = [raw_flow("node-r", "127.0.0.1", "192.0.2.9", 3, 2)]
        await publish_when_stored(client, codec.RAW_FLOW, flows, second)  # it reconnects, too
        await out.wait_for(lambda recs: {r["source.port"] for r in recs} == {1, 3}, within=30)
        assert not replica.task.done()
        await client.close()
    finally:
        assert await replica.stop() == 0
        server.close()


async def publish_when_stored(nc: NATS, schema: codec.Schema, subject: str, recs: list) -> None:
    """Publish a raw batch once the server stores it (reconnected, the stream there)."""
    async with asyncio.timeout(30):
        while True:
            try:
                await publish_raw(nc, schema, subject, recs)
                return
            except nats.errors.Error:
                await asyncio.sleep(0.2)


async def joined_pid(nc: NATS, out: Collected, sport: int) -> int | None:
    """Publish a socket event of pid ``sport`` and flows of its connection until one comes
    out joined to it (its ``source.process.pid``); None if none within 30 tries."""
    event = raw_socket("node-r", "connect", "198.51.100.7", sport, "192.0.2.9", 443, sport, "app")
    await publish_when_stored(nc, codec.RAW_SOCKET, subjects.raw_sockets("node-r"), [event])
    flow = raw_flow("node-r", "198.51.100.7", "192.0.2.9", sport, 443)
    for _ in range(30):
        seen = len(out.records)
        await publish_when_stored(nc, codec.RAW_FLOW, subjects.raw_flows("node-r"), [flow])
        records = await out.wait_for(lambda recs, seen=seen: len(recs) > seen, within=30)
        if records[-1].get("source.process.pid") == sport:
            return sport
        await asyncio.sleep(0.5)
    return None


@pytest.mark.parametrize("store_lost", [False, True], ids=["same-store", "store-lost"])
async def test_the_enricher_carries_on_after_a_nats_restart(
    store_lost: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Same store: nats-py rebuilds an ordered consumer from its last sequence but with
    the first request's start time, which the server refuses (err_code 10094); the socket
    feed must come back, or flows after the restart lose their process. Store lost: no
    streams, no consumers; the enricher makes them again (saying so once per consumer),
    enriches the flows published then, and learns the socket events of the new stream."""
    server = nats_server.start()
    port, store = server.port, server.store_dir
    replica = start_replica(make_settings(server.url, **{"nats.reconnect_wait_max": 0.2}))
    try:
        await replica.ready()
        client = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        out = await collect(client, subjects.FLOWS_ALL, codec.FLOW)
        assert await joined_pid(client, out, 41000) == 41000
        server.stop()  # same port
        if store_lost:
            shutil.rmtree(store)
        server = nats_server.start(port=port, store_dir=store)
        assert await joined_pid(client, out, 42000) == 42000
        await replica.ready()
        if store_lost:
            lines = [r.getMessage() for r in caplog.records]
            gone = [line for line in lines if line.startswith("work consumer gone")]
            assert len(gone) == len(consuming.WORK)
            assert len([line for line in lines if line == "state feed subscribed again"]) == 2
        await client.close()
    finally:
        assert await replica.stop() == 0
        server.close()


async def test_enricher_stops_when_nats_closes_its_connection_for_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's users change under a running enricher (a reload): the server answers
    ``-ERR 'Authorization Violation'`` and nats-py closes the client for good. The
    enricher stops with exit status 1 and one line saying why, so that its orchestrator
    starts it again, instead of staying "ready" on a connection nothing reconnects."""
    conf = tmp_path / "nats.conf"
    conf.write_text("authorization { users = [ {user: flow, password: one} ] }\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    settings = make_settings(server.url, **{"nats.user": "flow", "nats.password": "one"})
    replica = start_replica(settings)
    try:
        await replica.ready()
        conf.write_text("authorization { users = [ {user: flow, password: two} ] }\n")
        server.process.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
        assert await asyncio.wait_for(replica.task, 20) == 1
        lines = [r.getMessage() for r in caplog.records]
        reason = "NATS connection lost for good: nats: authorization failed"
        assert [line for line in lines if "root task nats" in line] == [
            f"root task nats failed: {reason}"
        ]
    finally:
        if not replica.task.done():
            await replica.stop()
        server.close()
