"""A subscription that falls behind, on a flowscope connection to a real nats-server:
every message nats-py drops is counted (``flowscope_nats_errors``), and the log gets a
rate-limited line, not one per message.

Before, nats-py's report of each dropped message was a "NATS error" warning of its own:
a core subscriber falling behind (``flowscope observe``, a feed of the enricher) wrote
thousands of lines a second."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import nats
import pytest
from flowscope.core import messaging
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.support import nats_server

SENT = 1000
KEPT = 10  # the subscription's pending_msgs_limit: it never reads, so the rest is dropped


@pytest.fixture
def server() -> Iterator[nats_server.NatsServer]:
    started = nats_server.start()
    yield started
    started.close()


async def test_dropped_messages_are_counted_each_and_logged_rate_limited(
    server: nats_server.NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, logger="flowscope.nats")
    nc = await messaging.connect(NatsSettings(url=server.url), "test", registry)
    publisher = await nats.connect(server.url)
    try:
        await nc.subscribe("behind", pending_msgs_limit=KEPT)
        await messaging.flush(nc)
        for _ in range(SENT):
            await publisher.publish("behind", b"m")
        await messaging.flush(publisher)
        await messaging.flush(nc)  # every message has reached nc, and been dropped or kept
    finally:
        await publisher.close()
        await messaging.close(nc)
    assert registry.get_sample_value("flowscope_nats_errors_total") == SENT - KEPT
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings, "the first drop is logged"
    assert len(warnings) <= 5, [r.getMessage() for r in warnings[:3]]
    assert {r.getMessage() for r in warnings} == {"NATS subscription fell behind: messages dropped"}
    assert warnings[0].subject == "behind"  # type: ignore[attr-defined]
