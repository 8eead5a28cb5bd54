"""Where a lane's consumer starts when it is created again while the lane runs: after
the last message the lane settled when the stream is the same, from the oldest retained
message when the stream itself was created again (its sequences restart)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
from flowscope.core import messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.exporter.consuming import durable_name
from flowscope.exporter.settings import BatchSettings
from flowscope.exporter.sink import ExportResult, Kind, Record
from nats.aio.client import Client as NATS

from tests.integration.exporter.harness import fresh_streams, publish_flows
from tests.integration.exporter.test_lane import Lane, StubSink, all_acked, lane_counter
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow

BATCH = BatchSettings(max_records=1, max_delay=0.05, ack_wait=3.0, retry_initial=0.1)


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


@dataclass
class RecordingSink(StubSink):
    """Stores every record it is given; an export of the record ``held`` names waits
    for ``release``."""

    name: str = "recording"
    held: int | None = None  # a flow.start_ns
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[object] = field(default_factory=list)  # flow.start_ns, in order

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        if any(r["flow.start_ns"] == self.held for r in records):
            await self.release.wait()
        self.received.extend(r["flow.start_ns"] for r in records)
        return ExportResult()

    def count(self, starts: range) -> Counter[object]:
        wanted = {flow(i)["flow.start_ns"] for i in starts}
        return Counter(s for s in self.received if s in wanted)


def once(starts: range) -> Counter[object]:
    return Counter(flow(i)["flow.start_ns"] for i in starts)


async def test_a_consumer_created_again_resumes_after_what_the_lane_settled(
    nc: NATS, streams: None
) -> None:
    """Before, a consumer deleted while the lane ran was created again with deliver
    policy ``all``: every record the stream still held was exported again (OTLP and
    stdout have no ids to drop them)."""
    sink = RecordingSink()
    lane = Lane(sink, nc, BATCH)
    first, later = range(5), range(5, 8)
    try:
        await publish_flows(nc, [flow(i) for i in first], per_message=1)
        await eventually(lambda: all_acked(nc, sink.name), what="the first records acked")
        await nc.jetstream().delete_consumer(subjects.STREAM_FLOWS, durable_name(sink.name))
        await publish_flows(nc, [flow(i) for i in later], per_message=1)
        await eventually(lambda: sink.count(later) == once(later), what="the later records")
        await eventually(lambda: all_acked(nc, sink.name), what="every record acked")
    finally:
        await lane.stop()
    assert lane_counter(lane, "consumers_resubscribed_total", sink.name) >= 1
    assert sink.count(first) == once(first)  # not exported again
    assert Counter(sink.received) == once(range(8))


async def test_a_message_in_flight_when_the_consumer_went_is_delivered_again(
    nc: NATS, streams: None
) -> None:
    """The consumer goes while a message's export is under way: resuming after the
    settled ones must not skip it (it may come twice, never zero times)."""
    sink = RecordingSink()
    lane = Lane(sink, nc, BATCH)
    settled, in_flight, later = range(3), range(3, 4), range(4, 6)
    try:
        await publish_flows(nc, [flow(i) for i in settled], per_message=1)
        await eventually(lambda: all_acked(nc, sink.name), what="the first records acked")
        sink.held = flow(3)["flow.start_ns"]
        await publish_flows(nc, [flow(3)])
        info = nc.jetstream().consumer_info

        async def taken() -> bool:
            consumer = await info(subjects.STREAM_FLOWS, durable_name(sink.name))
            return consumer.num_ack_pending == 1

        await eventually(taken, what="the message handed to the sink")
        await nc.jetstream().delete_consumer(subjects.STREAM_FLOWS, durable_name(sink.name))
        await publish_flows(nc, [flow(i) for i in later], per_message=1)
        await eventually(lambda: sink.count(later) == once(later), what="the later records")
        sink.release.set()
        await eventually(lambda: all_acked(nc, sink.name), what="every record acked")
    finally:
        sink.release.set()
        await lane.stop()
    assert sink.count(settled) == once(settled)
    assert sink.count(later) == once(later)
    assert 1 <= sink.count(in_flight)[flow(3)["flow.start_ns"]] <= 2


async def test_a_stream_created_again_is_read_from_its_oldest_message(
    nc: NATS, nats_srv: NatsServer, streams: None
) -> None:
    """The stream is deleted and created again while the lane waits on its sink, and
    fills past the sequence the lane had settled before it subscribes again: its
    sequences restarted, so every message of the new stream is delivered."""
    js = nc.jetstream()
    sink = RecordingSink()
    lane = Lane(sink, nc, replace(BATCH, max_in_flight=1))
    old, held, new = range(3), range(3, 5), range(10, 18)
    try:
        await publish_flows(nc, [flow(i) for i in old], per_message=1)
        await eventually(lambda: all_acked(nc, sink.name), what="the old records acked")
        sink.held = flow(3)["flow.start_ns"]  # the one slot taken, the next waits: no fetch
        await publish_flows(nc, [flow(i) for i in held], per_message=1)

        async def waiting() -> bool:
            consumer = await js.consumer_info(subjects.STREAM_FLOWS, durable_name(sink.name))
            return consumer.num_ack_pending == 2

        await eventually(waiting, what="the lane waiting for its slot")
        await js.delete_stream(subjects.STREAM_FLOWS)
        await messaging.ensure_streams(js, NatsSettings(url=nats_srv.url))
        await publish_flows(nc, [flow(i) for i in new], per_message=1)  # past sequence 5
        sink.release.set()
        await eventually(lambda: sink.count(new) == once(new), what="the new stream's records")
        await eventually(lambda: all_acked(nc, sink.name), what="every record acked")
    finally:
        sink.release.set()
        await lane.stop()
    assert sink.count(old) == once(old)


async def test_messages_a_previous_process_left_unacked_are_not_skipped(
    nc: NATS, streams: None
) -> None:
    """The durable consumer already exists, with messages delivered to a process that
    died before acking them: the lane never saw them, so a consumer created again
    after the lane acked later ones still starts at them."""
    js = nc.jetstream()
    name = durable_name(RecordingSink.name)
    await publish_flows(nc, [flow(i) for i in range(2)], per_message=1)
    died = await js.pull_subscribe(subjects.FLOWS_ALL, durable=name, stream=subjects.STREAM_FLOWS)
    assert len(await died.fetch(2, timeout=5)) == 2  # never acked
    await died.unsubscribe()
    sink = RecordingSink()
    lane = Lane(sink, nc, replace(BATCH, ack_wait=60.0))  # no redelivery during the test
    try:
        await publish_flows(nc, [flow(i) for i in range(2, 4)], per_message=1)
        await eventually(lambda: sink.count(range(2, 4)) == once(range(2, 4)), what="2 and 3")

        async def only_those_pending() -> bool:
            consumer = await js.consumer_info(subjects.STREAM_FLOWS, name)
            return consumer.num_ack_pending == 2

        await eventually(only_those_pending, what="2 and 3 acked")
        await js.delete_consumer(subjects.STREAM_FLOWS, name)
        await publish_flows(nc, [flow(4)])
        await eventually(lambda: all_acked(nc, sink.name), what="every record acked")
    finally:
        await lane.stop()
    assert set(sink.count(range(5))) == set(once(range(5)))  # 2 and 3 may come twice


async def test_a_consumer_created_from_a_sequence_takes_new_settings_at_the_next_start(
    nc: NATS, streams: None
) -> None:
    """The consumer created again starts from a sequence: at the next start the lane
    updates its ack_wait without asking JetStream to change where it started (refused)."""
    sink = RecordingSink()
    lane = Lane(sink, nc, BATCH)
    try:
        await publish_flows(nc, [flow(0)])
        await eventually(lambda: all_acked(nc, sink.name), what="the record acked")
        await nc.jetstream().delete_consumer(subjects.STREAM_FLOWS, durable_name(sink.name))
        await publish_flows(nc, [flow(1)])
        await eventually(lambda: sink.count(range(2)) == once(range(2)), what="the second record")
    finally:
        await lane.stop()
    lane = Lane(sink, nc, replace(BATCH, ack_wait=7.0))
    info = nc.jetstream().consumer_info

    async def updated() -> bool:
        consumer = await info(subjects.STREAM_FLOWS, durable_name(sink.name))
        return consumer.config.ack_wait == 7.0

    try:
        await eventually(updated, what="the new ack_wait")
    finally:
        await lane.stop()


async def test_a_delivery_the_lane_never_received_is_not_skipped(nc: NATS, streams: None) -> None:
    """A message the consumer delivered that never reached the lane (lost with a
    connection; here taken by another subscriber to the same durable that never acks):
    the lane acked messages on both sides of it, yet a consumer created again must
    start at it."""
    js = nc.jetstream()
    name = durable_name(RecordingSink.name)
    sink = RecordingSink(held=flow(1)["flow.start_ns"])
    lane = Lane(sink, nc, replace(BATCH, max_in_flight=1, ack_wait=60.0))
    try:
        await publish_flows(nc, [flow(0)])
        await eventually(lambda: all_acked(nc, sink.name), what="the first record acked")
        await publish_flows(nc, [flow(1), flow(2)], per_message=1)  # 1 held, 2 waits: no fetch

        async def not_fetching() -> bool:
            consumer = await js.consumer_info(subjects.STREAM_FLOWS, name)
            return consumer.num_ack_pending == 2 and not consumer.num_waiting

        await eventually(not_fetching, what="the lane waiting for its slot")
        await publish_flows(nc, [flow(3)])
        other = await js.pull_subscribe(
            subjects.FLOWS_ALL, durable=name, stream=subjects.STREAM_FLOWS
        )
        assert len(await other.fetch(1, timeout=5)) == 1  # the lane never sees it
        await other.unsubscribe()
        sink.release.set()
        await publish_flows(nc, [flow(4)])
        await eventually(
            lambda: sink.count(range(5)).keys() == {flow(i)["flow.start_ns"] for i in (0, 1, 2, 4)},
            what="all but 3",
        )
        await js.delete_consumer(subjects.STREAM_FLOWS, name)
        await publish_flows(nc, [flow(5)])
        await eventually(lambda: all_acked(nc, sink.name), what="every record acked")
    finally:
        sink.release.set()
        await lane.stop()
    assert set(sink.count(range(6))) == set(once(range(6)))  # 3 is not lost
    assert sink.count(range(3)) == once(range(3))
