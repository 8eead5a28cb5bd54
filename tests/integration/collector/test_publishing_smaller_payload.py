"""NATS comes back with a smaller max_payload than the publisher was started with: the
messages sealed for the old limit are refused by the client (MaxPayloadError) on every
attempt. They must be sent again in smaller messages, not retried for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.core import codec, subjects
from flowscope.core.messaging import NatsSettings, ensure_streams
from prometheus_client import CollectorRegistry

from tests.integration.collector.test_publishing import flow, running
from tests.support import nats_server
from tests.support.waiting import eventually


async def stored(js: Any, subject: str) -> tuple[list[dict[str, Any]], list[int]]:
    """The flow records the raw stream holds for ``subject`` in stream order, and the
    size of each message."""
    info = await js.stream_info(subjects.STREAM_RAW)
    sub = await js.subscribe(subject, ordered_consumer=True)
    records: list[dict[str, Any]] = []
    sizes: list[int] = []
    for _ in range(info.state.messages):
        msg = await sub.next_msg(timeout=5)
        sizes.append(len(msg.data))
        records.extend(codec.decode(codec.RAW_FLOW, msg.headers, msg.data))
    await sub.unsubscribe()
    return records, sizes


async def test_messages_too_large_for_a_restarted_server_are_sent_again_smaller(
    tmp_path: Path,
) -> None:
    small = tmp_path / "small.conf"
    small.write_text("max_payload: 4096\n")
    store = str(tmp_path / "js")
    server = nats_server.start(store_dir=store)
    port = server.port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await ensure_streams(js, NatsSettings())
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=100, batch_max_delay=0.05, max_payload=nc.max_payload)
    publisher = Publisher(js, "n1", limits, metrics)
    try:
        async with running(publisher):
            server.stop()
            server = nats_server.start(port=port, store_dir=store, extra=["-c", str(small)])
            await eventually(lambda: nc.is_connected and nc.max_payload == 4096, 20, "reconnected")
            publisher.submit("flows", [flow(i) for i in range(100)])  # ~20 kB: one message
            await eventually(lambda: publisher.buffered_records() == 0, 20, "all sent")
        records, sizes = await stored(js, subjects.raw_flows("n1"))
        assert [r["sport"] for r in records] == list(range(100))
        assert max(sizes) < 4096 and len(sizes) > 5  # stored, hence accepted: several
        assert metrics.publish_records.labels("flows")._value.get() == 100
        assert metrics.publish_dropped.labels("flows", "too_large")._value.get() == 0
    finally:
        await nc.close()
        server.close()
