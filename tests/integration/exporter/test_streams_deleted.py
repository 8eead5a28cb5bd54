"""Streams deleted under a running exporter lane, whose streams were made through its
JetStream context as the service makes them: the dead-letter stream is made again (as
at start-up) when a copy finds none — before, the message came back for ever — and a
lane whose stream is missing for a while resumes once another service made it again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.exporter.consuming import SinkLane
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.settings import BatchSettings
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from tests.integration.exporter.harness import publish_flows
from tests.integration.exporter.test_lane import BlockingSink, all_acked
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow


@pytest.fixture
async def lane(
    nc: NATS, nats_srv: NatsServer
) -> AsyncIterator[tuple[BlockingSink, NATS, CollectorRegistry]]:
    """A lane of a sink that takes everything, on fresh streams made as the service does."""
    js = nc.jetstream()
    for spec in subjects.STREAMS:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(spec.name)
    settings = NatsSettings(url=nats_srv.url)
    await messaging.ensure_streams(js, settings)
    sink = BlockingSink()
    sink.release.set()
    stopping = asyncio.Event()
    batch = BatchSettings(max_delay=0.05, ack_wait=3.0, retry_initial=0.1, retry_max=0.5)
    registry = CollectorRegistry()
    metrics = ExporterMetrics.create(registry)
    streams = messaging.StreamKeeper(lambda: messaging.ensure_streams(js, settings))
    lane = SinkLane(sink, js, nc, batch, metrics, stopping, streams=streams)
    task = asyncio.create_task(lane.run())
    try:
        yield sink, nc, registry
    finally:
        stopping.set()
        await asyncio.wait_for(task, 20)


async def holds_messages(js: JetStreamContext, stream: str) -> bool:
    try:
        return bool((await js.stream_info(stream)).state.messages)
    except NotFoundError:
        return False


async def test_a_deleted_dead_letter_stream_is_made_again(
    lane: tuple[BlockingSink, NATS, CollectorRegistry],
) -> None:
    sink, nc, _ = lane
    js = nc.jetstream()
    await js.delete_stream(subjects.STREAM_DLQ)
    invalid = flow(1)
    del invalid["flow.end_ns"]
    await publish_flows(nc, [flow(0), invalid])
    await eventually(lambda: holds_messages(js, subjects.STREAM_DLQ), what="the copy stored")
    await eventually(lambda: all_acked(nc, sink.name), what="the message acked")
    dead = await js.get_msg(subjects.STREAM_DLQ, 1)
    assert dead.headers is not None
    (record,) = codec.decode(codec.FLOW, dead.headers, dead.data)
    assert record["flow.start_ns"] == invalid["flow.start_ns"]
    assert [r["flow.start_ns"] for r in sink.exported] == [flow(0)["flow.start_ns"]]


async def test_a_lane_resumes_once_its_deleted_stream_is_made_again(
    lane: tuple[BlockingSink, NATS, CollectorRegistry], nats_srv: NatsServer
) -> None:
    """The stream stays missing while the lane finds its consumer gone and retries its
    subscription; then another service (the enricher publishing) makes it again."""
    sink, nc, registry = lane
    js = nc.jetstream()
    await publish_flows(nc, [flow(1)])
    await eventually(lambda: len(sink.exported) == 1, what="the first record")
    await js.delete_stream(subjects.STREAM_FLOWS)
    name, labels = "flowscope_exporter_consumers_resubscribed_total", {"sink": sink.name}
    await eventually(lambda: bool(registry.get_sample_value(name, labels)), what="consumer gone")
    await messaging.ensure_streams(nc.jetstream(), NatsSettings(url=nats_srv.url))
    await publish_flows(nc, [flow(2)])
    await eventually(lambda: len(sink.exported) == 2, what="a record after the stream came back")
    assert sink.exported[1]["flow.start_ns"] == flow(2)["flow.start_ns"]
