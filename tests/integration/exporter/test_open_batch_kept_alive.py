"""A batch still filling is kept alive: ``max_delay`` at or above ``ack_wait`` must not
make JetStream redeliver its messages while it waits for more records."""

from __future__ import annotations

from collections import Counter

import pytest
from flowscope.exporter.settings import BatchSettings
from nats.aio.client import Client as NATS

from tests.integration.exporter.harness import fresh_streams, publish_flows
from tests.integration.exporter.test_lane import BlockingSink, Lane, all_acked
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


async def test_a_partial_batch_held_past_ack_wait_exports_each_record_once(
    nc: NATS, streams: None
) -> None:
    """Before, a partial batch's messages got no in_progress while it waited for
    max_delay: JetStream redelivered them every ack_wait, the lane took each delivery
    into the same batch, and every record was exported three times."""
    sink = BlockingSink()
    sink.release.set()
    records = [flow(i) for i in range(3)]
    lane = Lane(sink, nc, BatchSettings(max_delay=3.0, ack_wait=1.0))
    try:
        await publish_flows(nc, records)  # one message: a partial batch
        await eventually(lambda: all_acked(nc, sink.name), what="the message acked")
    finally:
        await lane.stop()
    assert Counter(r["flow.start_ns"] for r in sink.exported) == Counter(
        r["flow.start_ns"] for r in records
    )  # each exactly once
