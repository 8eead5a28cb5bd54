"""Several NATS URLs: the first connection tries every server, not just the first one
nats-py picks from its shuffled pool."""

from __future__ import annotations

import asyncio

from flowscope.core import messaging
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.support import nats_server


async def test_a_server_that_refuses_does_not_hide_the_others() -> None:
    """One server of the list answers but refuses the credentials (a cluster member not
    yet given the new ones), the other accepts them. Before, nats-py's first connection
    gave up after the first server of its shuffled pool failed its handshake: half the
    connections without retry failed at start-up although a server was there."""
    refusing = nats_server.start(jetstream=False, extra=["--auth", "another-token"])
    accepting = nats_server.start(jetstream=False)
    try:
        settings = NatsSettings(url=f"{refusing.url},{accepting.url}", token="tok3n")
        for _ in range(8):  # the pool's order is random: each server comes first at times
            nc = await asyncio.wait_for(
                messaging.connect(settings, "test", CollectorRegistry(), retry=False), 20
            )
            assert nc.connected_url is not None
            assert nc.connected_url.port == accepting.port
            await messaging.close(nc)
    finally:
        refusing.close()
        accepting.close()
