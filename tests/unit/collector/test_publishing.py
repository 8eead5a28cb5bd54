"""Publisher against a fake JetStream (the JetStreamPublisher seam): the order messages
are stored in when a publish fails, their ids across retries, and the flush deadline.
tests/integration/collector/test_publishing.py runs it against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.core.messaging import MSG_ID_HEADER, StreamKeeper
from nats.js.errors import NoStreamResponseError
from prometheus_client import CollectorRegistry

from tests.support.waiting import eventually


class FakeJetStream:
    """Stores what it is sent, in the order publishes complete; the calls numbered in
    ``failing`` time out instead (not stored); with ``silent`` every call waits out its
    timeout, as nats-py does while it reconnects."""

    def __init__(self, failing: frozenset[int] = frozenset(), silent: bool = False) -> None:
        self.failing = failing
        self.silent = silent
        self.calls = 0
        self.stored: list[bytes] = []
        self.ids: list[str] = []  # the Nats-Msg-Id of every call
        self.timeouts: list[float] = []

    async def publish(
        self,
        subject: str,
        payload: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - nats-py's signature
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        self.calls += 1
        call = self.calls
        self.ids.append((headers or {}).get(MSG_ID_HEADER, ""))
        self.timeouts.append(timeout or 0.0)
        if self.silent:
            await asyncio.sleep(timeout or 0.0)
        await asyncio.sleep(0.01)  # the round trip: later calls may start meanwhile
        if self.silent or call in self.failing:
            raise TimeoutError("nats: timeout")
        self.stored.append(payload)


def publisher(js: FakeJetStream, metrics: CollectorMetrics) -> Publisher:
    return Publisher(js, "n1", PublishLimits(batch_max_records=1, batch_max_delay=0.01), metrics)


async def test_a_failed_publish_is_stored_before_the_messages_after_it() -> None:
    """A socket's connect, then its close: the first publish times out (not stored); the
    stream must still hold connect before close."""
    js = FakeJetStream(failing=frozenset({1}))
    pub = publisher(js, CollectorMetrics.create(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_deadline=5))
    events = [b'{"event":"connect"}\n', b'{"event":"udp"}\n', b'{"event":"close"}\n']
    for line in events:
        pub.submit_lines("sockets", [line])
    await eventually(lambda: pub.buffered_records() == 0, within=10)
    stop.set()
    await task
    assert js.stored == events


async def test_a_message_keeps_its_id_across_retries() -> None:
    """The Nats-Msg-Id is given when the message is sealed: JetStream's duplicate window
    drops the copies that retries send. Each message and each publisher (a restarted
    collector counts from 1 again) has its own."""
    js = FakeJetStream(failing=frozenset({1, 2}))
    pub = publisher(js, CollectorMetrics.create(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_deadline=5))
    pub.submit_lines("sockets", [b'{"n":1}\n'])
    pub.submit_lines("sockets", [b'{"n":2}\n'])
    await eventually(lambda: pub.buffered_records() == 0, within=10)
    stop.set()
    await task
    assert js.ids[0] == js.ids[1] == js.ids[2] != js.ids[3]
    assert len(js.ids) == 4
    again = FakeJetStream()
    other = publisher(again, CollectorMetrics.create(CollectorRegistry()))
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop, drain_deadline=5))
    other.submit_lines("sockets", [b'{"n":1}\n'])
    stop.set()
    await task
    assert again.ids[0] not in js.ids


async def test_flush_attempts_end_by_the_deadline_and_the_rest_is_counted() -> None:
    """NATS silent at shutdown: no publish attempt may wait past the flush deadline (the
    runtime cancels the task at its own), and what is left is counted as dropped."""
    js = FakeJetStream(silent=True)
    metrics = CollectorMetrics.create(CollectorRegistry())
    pub = publisher(js, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_deadline=0.3))
    pub.submit_lines("flows", [b'{"n":%d}\n' % i for i in range(5)])
    stop.set()
    await task
    assert js.timeouts and max(js.timeouts) <= 0.3
    assert metrics.publish_dropped.labels("flows", "shutdown")._value.get() == 5
    assert metrics.publish_records.labels("flows")._value.get() == 0


class StreamlessJetStream(FakeJetStream):
    """No stream answers (nats-py's NoStreamResponseError) until ``ensure_streams`` ran;
    its first ``broken`` runs fail."""

    def __init__(self, broken: int = 0) -> None:
        super().__init__()
        self.broken = broken
        self.ensured = 0  # ensure_streams calls
        self.streams = False

    async def ensure_streams(self) -> None:
        self.ensured += 1
        await asyncio.sleep(0.01)
        if self.ensured <= self.broken:
            raise TimeoutError("nats: timeout")
        self.streams = True

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
        if not self.streams:
            await asyncio.sleep(0.01)
            raise NoStreamResponseError
        return await super().publish(subject, payload, **kwargs)


async def test_streams_lost_by_nats_are_recreated_once_for_every_kind() -> None:
    """Every kind's publish finds no stream at once: the streams are recreated once (a
    failed attempt retried with backoff), and each kind's messages are stored in order."""
    js = StreamlessJetStream(broken=2)
    metrics = CollectorMetrics.create(CollectorRegistry())
    limits = PublishLimits(batch_max_records=1, batch_max_delay=0.01)
    pub = Publisher(js, "n1", limits, metrics, StreamKeeper(js.ensure_streams))
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop, drain_deadline=5))
    for kind in ("flows", "sockets", "dns"):
        pub.submit_lines(kind, [b'{"%s":1}\n' % kind.encode(), b'{"%s":2}\n' % kind.encode()])
    await eventually(lambda: pub.buffered_records() == 0, within=10)
    stop.set()
    await task
    assert js.ensured == 3  # two failed attempts, then one that worked for all kinds
    for kind in (b"flows", b"sockets", b"dns"):
        assert [p for p in js.stored if kind in p] == [b'{"%s":1}\n' % kind, b'{"%s":2}\n' % kind]
