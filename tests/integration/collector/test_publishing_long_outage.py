"""A NATS away for long: the publisher keeps retrying, and resumes when it is back.

The retry backoff grew as ``0.05 * 2**failures``; after 1024 failed publishes in a row
(half an hour to two hours of outage at 2-7 s an attempt) that is no float any more:
OverflowError, the publishing task died and the collector stopped. The failures are
driven here through ``flush`` with a short deadline, whose backoff ends at the deadline.
"""

from __future__ import annotations

from pathlib import Path

import nats
from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.core import messaging, subjects
from flowscope.core.messaging import NatsSettings, ensure_streams
from prometheus_client import CollectorRegistry

from tests.integration.collector.test_publishing import stored_records
from tests.support import nats_server

FAILURES = 1100  # past 1024: 2**1024 overflows a float


async def test_publishing_survives_a_thousand_failures_and_resumes(tmp_path: Path) -> None:
    server = nats_server.start(store_dir=str(tmp_path / "js"))
    port = server.port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    try:
        await ensure_streams(js, NatsSettings())
        metrics = CollectorMetrics.create(CollectorRegistry())
        publisher = Publisher(js, "n1", PublishLimits(), metrics)
        server.stop()
        publisher.submit("sockets", [{"seq": 1}])
        errors = metrics.publish_errors.labels("sockets")
        for _ in range(5 * FAILURES):  # bounded: each flush fails at least once
            if errors._value.get() >= FAILURES:
                break
            await publisher.flush(0.01)
        assert errors._value.get() >= FAILURES
        assert publisher.buffered_records() == 1  # kept, still to send
        server = nats_server.start(port=port, store_dir=str(tmp_path / "js"))
        for _ in range(10):
            await publisher.flush(5)
            if not publisher.buffered_records():
                break
        assert metrics.publish_records.labels("sockets")._value.get() == 1
        # Every attempt nats-py buffered meanwhile carried the same Nats-Msg-Id: one copy.
        assert await stored_records(js, subjects.raw_sockets("n1")) == [{"seq": 1}]
    finally:
        await messaging.close(nc)
        server.close()
