"""The pipelined JetStream publisher: acks, no-stream and stream errors, duplicates,
atomic batches and the pipeline's fallback to one ack per message."""

from __future__ import annotations

import asyncio

import nats
import orjson
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers, Output
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.publishing import (
    ATOMIC_DISABLED,
    ATOMIC_DUPLICATE,
    ATOMIC_MAX,
    AckedPublisher,
    PublishError,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from tests.support import nats_server


async def test_acks_errors_and_duplicates(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await js.add_stream(StreamConfig(name="ENRICHER_PUB_TEST", subjects=["enricher-pub-test.>"],
                                     max_msg_size=1000))  # fmt: skip
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    try:
        acks = [await publisher.publish(f"enricher-pub-test.{i}", b"x", {"Nats-Msg-Id": f"m{i}"})
                for i in range(50)]  # fmt: skip
        results = [orjson.loads(r) for r in await asyncio.gather(*acks)]
        assert [r["seq"] for r in results] == list(range(1, 51))
        again = await (await publisher.publish("enricher-pub-test.0", b"x", {"Nats-Msg-Id": "m0"}))
        assert orjson.loads(again).get("duplicate") is True
        with pytest.raises(PublishError, match="no stream"):
            await (await publisher.publish("nowhere.at.all", b"x", {}))
        with pytest.raises(PublishError, match="error"):
            await (await publisher.publish("enricher-pub-test.big", b"x" * 2000, {}))
        assert not publisher._pending  # every answered future is forgotten
    finally:
        await publisher.close()
        await js.delete_stream("ENRICHER_PUB_TEST")


async def test_atomic_batches_store_all_or_nothing(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await js.add_stream(StreamConfig(name="ENRICHER_ATOMIC_TEST", subjects=["enricher-atomic.>"],
                                     allow_atomic=True))  # fmt: skip
    await js.add_stream(StreamConfig(name="ENRICHER_PLAIN_TEST", subjects=["enricher-plain.>"]))
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    try:
        batch = [(f"enricher-atomic.{i % 7}", b"r%d\n" % i, {"Nats-Msg-Id": f"a{i}"})
                 for i in range(30)]  # fmt: skip
        ack = orjson.loads(await (await publisher.publish_atomic(batch)))
        assert (ack["seq"], ack["count"]) == (30, 30)
        # one message id already stored: the whole batch is refused, nothing doubled
        again = [*batch[25:], ("enricher-atomic.x", b"new\n", {"Nats-Msg-Id": "fresh"})]
        with pytest.raises(PublishError) as refused:
            await (await publisher.publish_atomic(again))
        assert refused.value.code == ATOMIC_DUPLICATE
        assert (await js.stream_info("ENRICHER_ATOMIC_TEST")).state.messages == 30
        with pytest.raises(PublishError) as disabled:
            await (await publisher.publish_atomic([("enricher-plain.a", b"x\n", {})]))
        assert disabled.value.code == ATOMIC_DISABLED
        assert (await js.stream_info("ENRICHER_PLAIN_TEST")).state.messages == 0
        for size in (0, ATOMIC_MAX + 1):
            with pytest.raises(ValueError):
                await publisher.publish_atomic(batch[:1] * size)
        assert not publisher._pending
    finally:
        await publisher.close()
        await js.delete_stream("ENRICHER_ATOMIC_TEST")
        await js.delete_stream("ENRICHER_PLAIN_TEST")


def _raw_message(nc: NATS, sequence: int) -> Msg:
    """A work message as a pull consumer delivers it (its reply subject carries the
    raw stream sequence the output's message ids are derived from)."""
    reply = f"$JS.ACK.{subjects.STREAM_RAW}.enricher-flows.1.{sequence}.{sequence}.1700000000.0"
    return Msg(_client=nc, subject=subjects.raw_flows("n1"), reply=reply, data=b"")


async def test_pipeline_publishes_a_redelivered_batch_exactly_once() -> None:
    """The output of one raw batch, published again after part or all of it was stored
    (a crash between publishing and acking), ends up stored exactly once."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        enricher = Enricher(LocalResolver(frozenset()), SocketTable(10, 1), NameCache(1, 2, 10),
                            Observers(1))  # fmt: skip
        pipeline = Pipeline(nc, enricher, Metrics.create(CollectorRegistry()))
        pipeline.max_bytes = 2048  # several chunks per subject
        await pipeline.publisher.start()
        assert await pipeline.use_atomic()
        output = Output(by_subject={
            subjects.flows(f"ns{i}", "_external"): [{"flow.n": i, "pad": "x" * 500}] * (i + 1)
            for i in range(12)
        })  # fmt: skip
        expected = len(pipeline._messages(codec.FLOW, output, 5))
        # an earlier attempt stored a few of the messages one by one, then crashed
        for subject, body, headers in pipeline._messages(codec.FLOW, output, 5)[:3]:
            await (await pipeline.publisher.publish(subject, body, headers))
        for _ in range(2):  # redelivered, then redelivered again after everything is stored
            assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 5))
            info = await js.stream_info(subjects.STREAM_FLOWS)
            assert info.state.messages == expected
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 6))  # atomic
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 2 * expected
        records = 0
        sub = await js.pull_subscribe(subjects.FLOWS_ALL, "count", stream=subjects.STREAM_FLOWS)
        for msg in await sub.fetch(2 * expected, timeout=5):
            records += len(codec.decode(codec.FLOW, msg.headers, msg.data))
        assert records == 2 * sum(i + 1 for i in range(12))
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_a_refused_atomic_batch_is_published_one_by_one() -> None:
    """A stream refuses a new atomic batch while 50 others are open on it (many replicas
    publishing at once); the pipeline then publishes that output message by message."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        for n in range(50):  # batches started and never committed (abandoned after 10 s)
            headers = {"Nats-Batch-Id": f"open{n}", "Nats-Batch-Sequence": "1"}
            await nc.publish(subjects.flows("other", "x"), b"{}\n", headers=headers)
        enricher = Enricher(LocalResolver(frozenset()), SocketTable(10, 1), NameCache(1, 2, 10),
                            Observers(1))  # fmt: skip
        pipeline = Pipeline(nc, enricher, Metrics.create(CollectorRegistry()))
        await pipeline.publisher.start()
        assert await pipeline.use_atomic()
        probe = [(subjects.flows("a", "probe"), b"{}\n", {})]
        with pytest.raises(PublishError) as refused:  # the stream refuses atomic batches now
            await (await pipeline.publisher.publish_atomic(probe))
        assert refused.value.code not in (0, ATOMIC_DISABLED, ATOMIC_DUPLICATE)
        output = Output(by_subject={subjects.flows("a", f"b{i}"): [{"n": i}] for i in range(5)})
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 1))
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 5
        assert pipeline.atomic_after == 0.0  # still on: the stream does allow them
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_streams_without_atomic_batches_get_one_ack_per_message() -> None:
    """An output stream that does not allow atomic batches (as on servers before 2.12,
    which do not know the setting) is published to message by message."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        for spec in subjects.STREAMS:
            await js.add_stream(StreamConfig(name=spec.name, subjects=list(spec.subjects)))
        enricher = Enricher(LocalResolver(frozenset()), SocketTable(10, 1), NameCache(1, 2, 10),
                            Observers(1))  # fmt: skip
        pipeline = Pipeline(nc, enricher, Metrics.create(CollectorRegistry()))
        await pipeline.publisher.start()
        assert not await pipeline.use_atomic()
        output = Output(by_subject={subjects.flows("a", "b"): [{"flow.n": 1}]})
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 1))
        # a replica that believes they are allowed (the stream was changed since its
        # start): the refusal is published one by one, and atomic batches turned off
        pipeline.atomic_after = 0.0
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 2))
        assert pipeline.atomic_after > 0.0  # refused: atomic batches off for a while
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 2
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()
