"""One sink's lane in process against a real nats-server and the real test peers:
what it does while a backend is away, when a sink fails unexpectedly, and when the
dead-letter stream cannot take a refused record.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.core.records import FLOW_REQUIRED
from flowscope.exporter.consuming import SinkLane, durable_name
from flowscope.exporter.ecs import EcsMapper, document_id
from flowscope.exporter.elasticsearch import ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import OtlpSink
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.otlp_encoding import LogsEncoder, resource_attributes
from flowscope.exporter.settings import BatchSettings, ElasticsearchSettings, OtlpSettings
from flowscope.exporter.sink import ExportResult, Kind, Record, Sink
from nats.aio.client import Client as NATS
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from tests.integration.exporter.harness import fresh_streams, publish_flows
from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.nats_server import NatsServer
from tests.support.otlp_receivers import HttpReceiver
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow

FLOWS = "logs-flowscope.flows-default"


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


class Lane:
    """A :class:`SinkLane` running as a task until :meth:`stop`."""

    def __init__(self, sink: Sink, nc: NATS, batch: BatchSettings) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ExporterMetrics.create(self.registry)
        self.stopping = asyncio.Event()
        self.lane = SinkLane(sink, nc.jetstream(), nc, batch, self.metrics, self.stopping)
        self.task = asyncio.create_task(self.lane.run())

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 20)


async def acked(nc: NATS, sink: str) -> bool:
    """Whether the sink's flow consumer has acked every message of the stream."""
    js = nc.jetstream()
    info = await js.consumer_info(subjects.STREAM_FLOWS, durable_name(sink))
    stream = await js.stream_info(subjects.STREAM_FLOWS)
    return info.ack_floor.stream_seq == stream.state.last_seq and not info.num_ack_pending


async def test_messages_waiting_for_a_slot_are_kept_alive_and_exported_once(
    nc: NATS, streams: None
) -> None:
    """One in-flight slot, a backend down for more than 3 times ack_wait: the messages
    fetched with the first but not yet in a batch must get in_progress too, or JetStream
    redelivers them behind the lane's back and each is exported twice."""
    receiver = await HttpReceiver().start()
    port = receiver.port
    await receiver.stop()
    target = resolve(OtlpSettings(endpoint=f"http://127.0.0.1:{port}", timeout=1.0), {})
    metrics = ExporterMetrics.create(CollectorRegistry())
    sink = OtlpSink(target, LogsEncoder(resource_attributes("")), metrics, (0.2, 0.5))
    batch = BatchSettings(max_records=1, max_delay=0.1, max_in_flight=1, ack_wait=2.0)
    records = [flow(i) for i in range(20)]
    await publish_flows(nc, records, per_message=1)
    lane = Lane(sink, nc, batch)
    back = HttpReceiver()
    try:
        await asyncio.sleep(7.0)  # the backend is down for 3.5 times ack_wait
        await back.start(port)
        await eventually(lambda: len(back.received.log_records) >= 20, what="every record")
        await eventually(lambda: acked(nc, "otlp"), what="every message acked")
        await asyncio.sleep(3.0)  # past ack_wait: a redelivery would have arrived by now
    finally:
        await lane.stop()
        await back.stop()
    starts = Counter(
        next(kv.value.int_value for kv in lr.attributes if kv.key == "flow.start_ns")
        for lr in back.received.log_records
    )
    assert starts == Counter(r["flow.start_ns"] for r in records)  # each exactly once


class StubSink:
    """The lifecycle of a sink that holds nothing (start, flush, shutdown, close do
    nothing); a test's sink adds ``name`` and ``export``."""

    async def start(self) -> None:
        return None

    async def force_flush(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class RaisingSink(StubSink):
    """A sink with a bug: every export raises (the seam every sink implements)."""

    name: str = "raising"
    calls: list[float] = field(default_factory=list)

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        self.calls.append(time.monotonic())
        raise RuntimeError("a bug in the sink")


async def test_an_export_that_raises_is_retried_with_backoff_not_in_a_hot_loop(
    nc: NATS, streams: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the lane logged a traceback and nak'ed at once: JetStream redelivered at
    once and the same batch went round hundreds of times a second."""
    await publish_flows(nc, [flow(i) for i in range(3)])
    sink = RaisingSink()
    batch = BatchSettings(max_delay=0.05, retry_initial=0.4, retry_max=2.0, ack_wait=5.0)
    with caplog.at_level(logging.ERROR, logger="flowscope.exporter.consuming"):
        lane = Lane(sink, nc, batch)
        await asyncio.sleep(3.0)
        stopped = time.monotonic()
        await lane.stop()  # the drain gives the batch one more attempt
    calls = [t for t in sink.calls if t < stopped]
    # backoff 0.4, 0.8, 1.6 (each jittered into [d/2, d]): a handful of attempts in 3 s
    assert 2 <= len(calls) <= 6, len(calls)
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.2 for gap in gaps), gaps
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # rate-limited
    assert not await acked(nc, "raising")  # the records stay in the stream


async def test_refused_records_are_acked_only_once_stored_in_the_dead_letter_stream(
    nc: NATS, nats_srv: NatsServer, streams: None
) -> None:
    """A record Elasticsearch refuses goes to the DLQ through JetStream: while that
    stream cannot store it, the source message is not acked (it comes back), and
    nothing is lost once the stream is back."""
    es = await FakeElasticsearch().start()
    js = nc.jetstream()
    await js.delete_stream(subjects.STREAM_DLQ)  # JetStream cannot store dead letters now
    refused = flow(2, **{"source.address": "not-an-ip"})  # valid record, ES refuses it
    await publish_flows(nc, [flow(1), refused, flow(3)])
    metrics = ExporterMetrics.create(CollectorRegistry())
    settings = ElasticsearchSettings(url=es.url)
    sink = ElasticsearchSink(settings, EcsMapper(), metrics, (0.05, 0.2))
    batch = BatchSettings(max_delay=0.05, retry_initial=0.2, retry_max=0.5, ack_wait=5.0)
    lane = Lane(sink, nc, batch)
    try:
        await eventually(lambda: len(es.stored(FLOWS)) == 2, what="the accepted records")
        await eventually(lambda: es.item_statuses[400] >= 2, what="the message redelivered")
        assert not await acked(nc, "elasticsearch")
        await messaging.ensure_streams(js, NatsSettings(url=nats_srv.url))
        await eventually(lambda: acked(nc, "elasticsearch"), what="the message acked")
        info = await js.stream_info(subjects.STREAM_DLQ)
        assert info.state.messages == 1
        dead = await js.get_msg(subjects.STREAM_DLQ, info.state.first_seq)
        assert dead.headers is not None
        assert "elasticsearch: 400" in dead.headers[subjects.DLQ_REASON_HEADER]
        for counted in ("failed", "dead_lettered"):  # once, however often it was refused
            name = f"flowscope_exporter_records_{counted}_total"
            assert lane.registry.get_sample_value(name, {"sink": "elasticsearch"}) == 1
    finally:
        await lane.stop()
        await es.stop()
    assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, flow(i)) for i in (1, 3)}
    assert set(es.creates.values()) == {1}


@dataclass
class BlockingSink(StubSink):
    """Holds every export until ``release`` is set; records each export's records."""

    name: str = "blocking"
    release: asyncio.Event = field(default_factory=asyncio.Event)
    exported: list[Record] = field(default_factory=list)

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        await self.release.wait()
        self.exported.extend(records)
        return ExportResult()


async def dead_letters(nc: NATS) -> list[RawStreamMsg]:
    """Every message the DLQ stream holds, oldest first."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_DLQ)
    if not info.state.messages:
        return []
    seqs = range(info.state.first_seq, info.state.last_seq + 1)
    return [await js.get_msg(subjects.STREAM_DLQ, seq) for seq in seqs]


def lane_counter(lane: Lane, name: str, sink: str) -> float:
    value = lane.registry.get_sample_value(f"flowscope_exporter_{name}", {"sink": sink})
    return value or 0.0


async def consumer_exists(nc: NATS, sink: str) -> bool:
    try:
        await nc.jetstream().consumer_info(subjects.STREAM_FLOWS, durable_name(sink))
    except NotFoundError:
        return False
    return True


async def all_acked(nc: NATS, sink: str) -> bool:
    """:func:`acked`, False while the lane has not created its consumer yet."""
    return await consumer_exists(nc, sink) and await acked(nc, sink)


async def test_a_bad_message_of_an_atomic_batch_is_dead_lettered_once_and_counted_once(
    nc: NATS, nats_srv: NatsServer, streams: None
) -> None:
    """Before, the DLQ copy carried the stored message's Nats-Batch-* headers: its
    publish was a broken atomic-batch publish, never stored, the message never acked
    (redelivered forever) and bad_messages_total counted every redelivery."""
    js = nc.jetstream()
    await js.delete_stream(subjects.STREAM_DLQ)  # the first deliveries cannot be stored
    subject = subjects.flows("shop", "payments")
    good = codec.encode(codec.FLOW, [flow(1)])
    batch_id = "b" * 22
    garbage = b"not json\n"
    await nc.publish(
        subject,
        garbage,
        headers={codec.SCHEMA_HEADER: "flow/1", "Nats-Batch-Id": batch_id,
                 "Nats-Batch-Sequence": "1"},
    )  # fmt: skip
    await nc.request(
        subject,
        good.body,
        headers={**good.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "2",
                 "Nats-Batch-Commit": "1"},
        timeout=5,
    )  # fmt: skip
    stored = await js.get_msg(subjects.STREAM_FLOWS, 1)
    assert stored.headers is not None and stored.headers.get("Nats-Batch-Id") == batch_id
    sink = BlockingSink()
    sink.release.set()
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=1.0, retry_initial=0.1))
    try:

        async def redelivered() -> bool:
            if not await consumer_exists(nc, sink.name):
                return False
            info = await js.consumer_info(subjects.STREAM_FLOWS, durable_name(sink.name))
            return (info.num_redelivered or 0) >= 1

        await eventually(redelivered, what="the bad message delivered again")
        await messaging.ensure_streams(js, NatsSettings(url=nats_srv.url))
        await eventually(lambda: all_acked(nc, sink.name), what="both messages acked")
    finally:
        await lane.stop()
    dead = await dead_letters(nc)
    assert [m.data for m in dead] == [garbage]
    assert dead[0].headers is not None
    assert not [h for h in dead[0].headers if h.startswith("Nats-Batch")]
    assert dead[0].headers[codec.SCHEMA_HEADER] == "flow/1"
    assert lane_counter(lane, "bad_messages_total", sink.name) == 1


async def test_dead_letters_of_a_recreated_stream_are_not_taken_for_duplicates(
    nc: NATS, nats_srv: NatsServer, streams: None
) -> None:
    """Before, the DLQ id was only ``<stream>:<sequence>``: once the stream was deleted
    and created again (sequences restart at 1), the next bad record at a reused position
    was dropped by the DLQ as a duplicate and its message acked: lost."""
    js = nc.jetstream()
    invalid = flow(1)
    del invalid["flow.end_ns"]
    sink = BlockingSink()
    sink.release.set()
    batch = BatchSettings(max_delay=0.05, ack_wait=3.0)
    for bad in (invalid, {**flow(7), "flow.bytes.delta": "lots"}):
        await publish_flows(nc, [flow(0), bad])  # FLOWSCOPE_FLOWS:1 both times
        lane = Lane(sink, nc, batch)
        try:
            await eventually(lambda: all_acked(nc, sink.name), what="the message acked")
        finally:
            await lane.stop()
        await js.delete_stream(subjects.STREAM_FLOWS)  # its consumer goes with it
        await messaging.ensure_streams(js, NatsSettings(url=nats_srv.url))
    dead = await dead_letters(nc)
    assert len(dead) == 2
    assert len({m.headers[messaging.MSG_ID_HEADER] for m in dead if m.headers}) == 2


async def refused_by_elasticsearch(nc: NATS, records: list[Record]) -> Lane:
    """``records`` published as one message and taken by an Elasticsearch sink's lane
    (the fake refusing what it would) until the message is acked; the stopped lane."""
    es = await FakeElasticsearch().start()
    await publish_flows(nc, records)  # one message
    metrics = ExporterMetrics.create(CollectorRegistry())
    sink = ElasticsearchSink(ElasticsearchSettings(url=es.url), EcsMapper(), metrics, (0.05, 0.2))
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=3.0))
    try:
        await eventually(lambda: all_acked(nc, "elasticsearch"), what="the message acked")
    finally:
        await lane.stop()
        await es.stop()
    return lane


async def test_each_refused_record_is_dead_lettered_with_its_own_reason(
    nc: NATS, streams: None
) -> None:
    """Before, the refused records of one message went to the DLQ as one copy labelled
    with the first record's reason."""
    records = [
        flow(1),
        flow(2, **{"source.address": "bad-src"}),
        flow(3, **{"destination.address": "bad-dst"}),
    ]
    await refused_by_elasticsearch(nc, records)
    copies = {}
    for dead in await dead_letters(nc):
        assert dead.headers is not None
        (record,) = codec.decode(codec.FLOW, dead.headers, dead.data)
        copies[record["flow.start_ns"]] = dead.headers[subjects.DLQ_REASON_HEADER]
    assert copies.keys() == {records[1]["flow.start_ns"], records[2]["flow.start_ns"]}
    assert "[source.ip]" in copies[records[1]["flow.start_ns"]]
    assert "[destination.ip]" in copies[records[2]["flow.start_ns"]]


@dataclass
class AcceptingSink(StubSink):
    """Stores every record it is given."""

    name: str = "accepting"

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        return ExportResult()


@dataclass
class PartlyConfirmingSink(StubSink):
    """Refuses the first record, and says two more were not stored anew (as an OTLP
    partial_success or an Elasticsearch 409 does)."""

    name: str = "partly"

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        return ExportResult(rejected={0: "refused"}, unconfirmed=2)


async def test_only_records_the_backend_confirmed_are_counted_exported(
    nc: NATS, streams: None
) -> None:
    """Before, records_exported_total was the batch minus rejected and deferred: records
    an OTLP partial_success dropped, or Elasticsearch already held, counted too."""
    await publish_flows(nc, [flow(i) for i in range(5)])
    lane = Lane(PartlyConfirmingSink(), nc, BatchSettings(max_delay=0.05, ack_wait=3.0))
    try:
        await eventually(lambda: all_acked(nc, "partly"), what="the message acked")
    finally:
        await lane.stop()
    assert lane_counter(lane, "records_exported_total", "partly") == 2
    assert lane_counter(lane, "records_failed_total", "partly") == 1


async def test_a_changed_ack_wait_reaches_the_existing_consumer(nc: NATS, streams: None) -> None:
    """Before, the durable kept the ack_wait it was created with while keep-alives were
    timed from the new setting: raised from 1 s to 6 s, in_progress came every 2 s while
    JetStream redelivered after 1 s, and records were exported again."""
    sink = BlockingSink()
    sink.release.set()
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=1.0))
    await eventually(lambda: consumer_exists(nc, sink.name), what="the consumer")
    await lane.stop()
    records = [flow(i) for i in range(3)]
    await publish_flows(nc, records, per_message=1)
    sink = BlockingSink()
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=6.0, max_in_flight=4))
    try:
        await asyncio.sleep(3.0)  # the backend holds the batch for 3 times the old ack_wait
        sink.release.set()
        await eventually(lambda: all_acked(nc, sink.name), what="every message acked")
    finally:
        await lane.stop()
    assert Counter(r["flow.start_ns"] for r in sink.exported) == Counter(
        r["flow.start_ns"] for r in records
    )  # each exactly once
    info = await nc.jetstream().consumer_info(subjects.STREAM_FLOWS, durable_name(sink.name))
    assert info.config.ack_wait == 6.0


async def test_a_lane_subscribes_again_when_its_consumer_is_gone(
    nc: NATS, nats_srv: NatsServer, streams: None
) -> None:
    """Before, a deleted consumer (``nats consumer rm``, the stream deleted and created
    again) looked like a disconnection forever: the lane never fetched again."""
    js = nc.jetstream()
    sink = BlockingSink()
    sink.release.set()
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=3.0, retry_initial=0.1))

    def exported(start: int) -> bool:
        return any(r["flow.start_ns"] == flow(start)["flow.start_ns"] for r in sink.exported)

    try:
        await publish_flows(nc, [flow(1)])
        await eventually(lambda: exported(1), what="the first record")
        await js.delete_consumer(subjects.STREAM_FLOWS, durable_name(sink.name))
        await publish_flows(nc, [flow(2)])
        await eventually(lambda: exported(2), what="a record after the consumer was deleted")
        await js.delete_stream(subjects.STREAM_FLOWS)
        await messaging.ensure_streams(js, NatsSettings(url=nats_srv.url))
        await publish_flows(nc, [flow(3)])
        await eventually(lambda: exported(3), what="a record after the stream was recreated")
    finally:
        await lane.stop()
    assert lane_counter(lane, "consumers_resubscribed_total", sink.name) >= 2


async def test_many_refused_records_of_one_message_share_dead_letter_copies(
    nc: NATS, streams: None
) -> None:
    """Elasticsearch names each document in its reason, so 20 refused records had 20
    reasons, and one message became 20 copies. The first 8 reasons keep a copy each;
    the other 12 records share one more, whose reason lists theirs."""
    records = [flow(i, **{"source.address": f"bad-{i}"}) for i in range(20)]
    lane = await refused_by_elasticsearch(nc, records)
    held = []
    for dead in await dead_letters(nc):
        assert dead.headers is not None
        starts = [r["flow.start_ns"] for r in codec.decode(codec.FLOW, dead.headers, dead.data)]
        held.append((starts, dead.headers[subjects.DLQ_REASON_HEADER]))
    assert [len(starts) for starts, _ in held] == [1] * 8 + [12]
    assert sorted(s for starts, _ in held for s in starts) == [r["flow.start_ns"] for r in records]
    for starts, reason in held[:8]:
        (start,) = starts
        assert reason.count("failed to parse field [source.ip]") == 1
        (record,) = [r for r in records if r["flow.start_ns"] == start]
        assert document_id(Kind.FLOW, record) in reason
    shared = held[8][1]
    assert shared.startswith("elasticsearch: ")
    assert shared.count("failed to parse field [source.ip]") == 8  # of its 12 reasons
    assert shared.endswith("; and 4 more")
    assert lane_counter(lane, "records_dead_lettered_total", "elasticsearch") == 20


async def test_records_of_one_message_with_many_problems_share_dead_letter_copies(
    nc: NATS, streams: None
) -> None:
    """Invalid records, each missing a different key: a copy for each of the first 8
    problems, one more for the rest, every record kept; the same copies whichever sink
    finds them (ids from the message and the copy's first record)."""
    keys = sorted(FLOW_REQUIRED)[:12]
    records = [{k: v for k, v in flow(i).items() if k != key} for i, key in enumerate(keys)]
    await publish_flows(nc, [flow(100), *records])  # one message, a good record first
    lane = Lane(AcceptingSink(), nc, BatchSettings(max_delay=0.05, ack_wait=3.0))
    try:
        await eventually(lambda: all_acked(nc, "accepting"), what="the message acked")
    finally:
        await lane.stop()
    copies = await dead_letters(nc)
    held = [codec.decode(codec.FLOW, c.headers, c.data) for c in copies if c.headers]
    assert [len(h) for h in held] == [1] * 8 + [4]
    assert [r for h in held for r in h] == records
    reasons = [c.headers[subjects.DLQ_REASON_HEADER] for c in copies if c.headers]
    assert reasons[:8] == [f"bad-record: flow record #{i + 1}: missing key {k!r}"
                           for i, k in enumerate(keys[:8])]  # fmt: skip
    assert reasons[8] == "bad-record: flow " + "; ".join(
        f"record #{i + 9}: missing key {k!r}" for i, k in enumerate(keys[8:])
    )
    assert lane_counter(lane, "records_exported_total", "accepting") == 1
