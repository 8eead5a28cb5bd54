"""The NATS server restarts mid-stream: the enricher reconnects and carries on, losing
nothing; a connection nats-py closes for good stops it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import nats
import nats.errors
import pytest
from flowscope.core import codec, subjects

from tests.integration.enricher.conftest import (
    collect,
    make_settings,
    publish_raw,
    raw_flow,
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
        async with asyncio.timeout(30):  # the test's own client reconnects, too
            while True:
                try:
                    await publish_raw(client, codec.RAW_FLOW, flows, second)
                    break
                except nats.errors.Error:
                    await asyncio.sleep(0.2)
        await out.wait_for(lambda recs: {r["source.port"] for r in recs} == {1, 3}, within=30)
        assert not replica.task.done()
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
