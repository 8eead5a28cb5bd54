"""Publishing raw records to a real nats-server: batching, max payload, outage and resume."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings, ensure_streams
from prometheus_client import CollectorRegistry

from tests.support import nats_server
from tests.support.waiting import eventually


def flow(i: int) -> dict[str, Any]:
    return {
        "observer": "n1", "start_ns": i, "end_ns": i + 1, "end_reason": "active_timeout",
        "proto": 6, "src": "10.0.0.1", "dst": "10.0.0.2", "sport": i % 65536, "dport": 80,
        "bytes": 100, "packets": 1, "rbytes": 0, "rpackets": 0,
    }  # fmt: skip


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[nats_server.NatsServer]:
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 4096\n")
    server = nats_server.start(extra=["-c", str(conf)])
    yield server
    server.close()


class Received:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.sizes: list[int] = []

    async def handler(self, msg: Any) -> None:
        self.sizes.append(len(msg.data))
        self.records.extend(codec.decode(codec.RAW_FLOW, msg.headers, msg.data))


@contextlib.asynccontextmanager
async def running(publisher: Publisher) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop, drain_deadline=5))
    try:
        yield stop
    finally:
        stop.set()
        await task


async def test_batches_stay_under_max_payload_and_all_arrive(
    small_server: nats_server.NatsServer,
) -> None:
    nc = await nats.connect(small_server.url)
    await ensure_streams(nc.jetstream(), NatsSettings())
    got = Received()
    await nc.subscribe(subjects.raw_flows("n1"), cb=got.handler)
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=50, batch_max_delay=0.1, max_payload=nc.max_payload)
    publisher = Publisher(nc.jetstream(), "n1", limits, metrics)
    async with running(publisher):
        publisher.submit("flows", [flow(i) for i in range(500)])
        await eventually(lambda: len(got.records) == 500, within=10)
    assert [r["start_ns"] for r in got.records] == list(range(500))  # in order, none twice
    assert max(got.sizes) <= 4096 and len(got.sizes) >= 500 // 50
    assert metrics.publish_records.labels("flows")._value.get() == 500
    await nc.close()


async def test_a_producer_that_catches_up_loses_nothing_past_the_buffer(
    small_server: nats_server.NatsServer,
) -> None:
    """A drain renders faster than JetStream acknowledges: 200 chunks of 25 records
    (~5 kB each, ~1 MB in all) through a 20 kB buffer arrive complete when the producer
    waits in catch_up() between chunks (the bound would otherwise drop the oldest
    messages)."""
    nc = await nats.connect(small_server.url)
    await ensure_streams(nc.jetstream(), NatsSettings())
    got = Received()
    await nc.subscribe(subjects.raw_flows("n1"), cb=got.handler)
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(
        batch_max_records=20, batch_max_delay=0.05, buffer_bytes=20_000, max_payload=nc.max_payload
    )
    publisher = Publisher(nc.jetstream(), "n1", limits, metrics)
    async with running(publisher):
        for i in range(0, 5000, 25):
            publisher.submit_lines("flows", codec.encode_lines([flow(j) for j in range(i, i + 25)]))
            await publisher.catch_up("flows")
            assert metrics.publish_buffered_bytes.labels("flows")._value.get() <= 20_000
        await eventually(lambda: len(got.records) == 5000, within=30)
    assert [r["start_ns"] for r in got.records] == list(range(5000))
    assert metrics.publish_dropped.labels("flows", "buffer_full")._value.get() == 0
    await nc.close()


async def test_idle_sender_wakes_for_a_lone_record_of_any_kind(
    small_server: nats_server.NatsServer,
) -> None:
    """The sender sleeps without polling while idle; a record below the batch size must
    still go out once its batch_max_delay has passed, every time and for every kind."""
    nc = await nats.connect(small_server.url)
    await ensure_streams(nc.jetstream(), NatsSettings())
    got = Received()
    await nc.subscribe(subjects.raw_flows("n1"), cb=got.handler)
    sockets: list[Any] = []

    async def on_socket(msg: Any) -> None:
        sockets.append(msg)

    await nc.subscribe(subjects.raw_sockets("n1"), cb=on_socket)
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=1000, batch_max_delay=0.1, max_payload=nc.max_payload)
    publisher = Publisher(nc.jetstream(), "n1", limits, metrics)
    async with running(publisher):
        for i in range(3):
            await asyncio.sleep(0.3)  # idle: nothing pending, nothing in the outbox
            publisher.submit("flows", [flow(i)])
            await eventually(lambda: len(got.records) == i + 1, within=10)  # noqa: B023
        publisher.submit("sockets", [{"observer": "n1"}])
        await eventually(lambda: len(sockets) == 1, within=10)
    assert [r["start_ns"] for r in got.records] == [0, 1, 2]
    assert publisher.buffered_records() == 0
    await nc.close()


async def test_outage_buffers_bounded_counts_drops_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "js").mkdir()
    server = nats_server.start(store_dir=str(tmp_path / "js"))
    port = server.port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_streams(nc.jetstream(), NatsSettings())
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=10, batch_max_delay=0.05, buffer_bytes=20_000)
    publisher = Publisher(nc.jetstream(), "n1", limits, metrics)
    try:
        async with running(publisher):
            server.stop()
            for i in range(0, 1000, 10):  # ~200 B per record: far more than 20 kB
                publisher.submit("flows", [flow(j) for j in range(i, i + 10)])
                await asyncio.sleep(0.005)
            await eventually(
                lambda: metrics.publish_dropped.labels("flows", "buffer_full")._value.get() > 0,
                within=10,
            )
            dropped = metrics.publish_dropped.labels("flows", "buffer_full")._value.get()
            assert metrics.publish_buffered_bytes.labels("flows")._value.get() <= 20_000
            server = nats_server.start(port=port, store_dir=str(tmp_path / "js"))
            await eventually(lambda: publisher.buffered_records() == 0, within=20)
        published = metrics.publish_records.labels("flows")._value.get()
        assert published + dropped == 1000  # everything either delivered or counted
        js = nc.jetstream()
        info = await js.stream_info("FLOWSCOPE_RAW")
        assert info.state.messages >= 1
    finally:
        await nc.close()
        server.close()


async def stored_records(js: Any, subject: str) -> list[dict[str, Any]]:
    """Every record the raw stream holds for ``subject``, in stream order."""
    info = await js.stream_info(subjects.STREAM_RAW)
    sub = await js.subscribe(subject, ordered_consumer=True)
    records: list[dict[str, Any]] = []
    for _ in range(info.state.messages):
        msg = await sub.next_msg(timeout=5)
        records.extend(codec.decode(codec.RAW_SOCKET, msg.headers, msg.data))
    await sub.unsubscribe()
    return records


async def test_retries_across_a_nats_restart_are_stored_once(tmp_path: Path) -> None:
    """While nats-py reconnects it buffers every publish attempt, and sends them all when
    the server is back: each retry of a message is one more copy. The message's
    Nats-Msg-Id, the same on every attempt, has JetStream store it once."""
    server = nats_server.start(store_dir=str(tmp_path / "js"))
    port = server.port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await ensure_streams(js, NatsSettings())
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=1000, batch_max_delay=0.05)
    publisher = Publisher(js, "n1", limits, metrics)
    try:
        async with running(publisher):
            publisher.submit("sockets", [{"seq": 0}])
            await eventually(lambda: publisher.buffered_records() == 0, within=10)
            server.stop()
            publisher.submit("sockets", [{"seq": i} for i in range(1, 11)])
            errors = metrics.publish_errors.labels("sockets")
            await eventually(lambda: errors._value.get() >= 2, within=30)  # two copies buffered
            server = nats_server.start(port=port, store_dir=str(tmp_path / "js"))
            await eventually(lambda: publisher.buffered_records() == 0, within=30)
        records = await stored_records(js, subjects.raw_sockets("n1"))
        assert [r["seq"] for r in records] == list(range(11))
    finally:
        await nc.close()
        server.close()


async def test_records_unsent_when_cancelled_at_shutdown_are_counted(tmp_path: Path) -> None:
    """NATS is down as the collector stops and the runtime cancels the flush at its own
    drain deadline: every record is either published or counted as dropped."""
    server = nats_server.start(store_dir=str(tmp_path / "js"))
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await ensure_streams(nc.jetstream(), NatsSettings())
    metrics = CollectorMetrics.create(CollectorRegistry())
    publisher = Publisher(nc.jetstream(), "n1", PublishLimits(batch_max_delay=0.05), metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop, drain_deadline=60))
    try:
        publisher.submit("flows", [flow(i) for i in range(50)])
        await eventually(lambda: publisher.buffered_records() == 0, within=10)
        server.stop()
        publisher.submit("flows", [flow(i) for i in range(50, 150)])
        stop.set()  # the flush starts and cannot reach NATS
        errors = metrics.publish_errors.labels("flows")
        await eventually(lambda: errors._value.get() >= 1, within=30)
        task.cancel()  # the runtime's drain deadline
        await asyncio.gather(task, return_exceptions=True)
        published = metrics.publish_records.labels("flows")._value.get()
        dropped = metrics.publish_dropped.labels("flows", "shutdown")._value.get()
        assert (published, dropped) == (50, 100)
        assert publisher.buffered_records() == 0
    finally:
        task.cancel()
        await messaging.close(nc)  # nats-py's close raises while it holds unsent commands
        server.close()


async def test_publishing_resumes_when_nats_comes_back_without_its_streams(
    tmp_path: Path,
) -> None:
    """nats-server restarted on an empty store (a lost volume): no stream answers a raw
    publish any more. The publisher recreates the streams and publishes on, in order,
    losing none of the records it still held."""
    store = tmp_path / "js"
    server = nats_server.start(store_dir=str(store))
    port = server.port
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    settings = NatsSettings()
    await ensure_streams(js, settings)
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=10, batch_max_delay=0.05)
    streams = messaging.StreamKeeper(lambda: ensure_streams(js, settings))
    publisher = Publisher(js, "n1", limits, metrics, streams)
    try:
        async with running(publisher):
            publisher.submit("sockets", [{"seq": 0}])
            await eventually(lambda: publisher.buffered_records() == 0, within=10)
            server.stop()
            shutil.rmtree(store)
            publisher.submit("sockets", [{"seq": i} for i in range(1, 6)])
            server = nats_server.start(port=port, store_dir=str(store))
            publisher.submit("sockets", [{"seq": i} for i in range(6, 11)])
            await eventually(lambda: publisher.buffered_records() == 0, within=30)
        records = await stored_records(js, subjects.raw_sockets("n1"))
        assert [r["seq"] for r in records] == list(range(1, 11))  # seq 0 went with the store
        assert metrics.publish_records.labels("sockets")._value.get() == 11
    finally:
        await nc.close()
        server.close()
