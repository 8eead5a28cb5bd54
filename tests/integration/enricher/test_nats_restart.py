"""The NATS server restarts mid-stream: the enricher reconnects and carries on, losing nothing."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
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
