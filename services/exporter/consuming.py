"""One durable JetStream pull consumer per sink and stream, batching into the sink.

Each sink gets its own durable consumer (``<consumer.durable>-<sink>``, by default
``flowscope-exporter-<sink>``) on each of the two streams it reads (``FLOWSCOPE_FLOWS``,
``FLOWSCOPE_DNS``), so each sink moves at its own pace: a sink that is down stops
fetching (its in-flight bound is reached) while the others go on. Replicas of one
exporter share the name, so they split the records between them; another exporter
that must get every record too needs another name. Messages are decoded, records
validated, and accumulated into a batch until ``max_records`` or ``max_delay``; the
batch goes to the sink; when the sink answers, each message is acked if every one of
its records was delivered or dead-lettered, and nak'ed (redelivered) if any was
deferred. While a batch waits on a slow or absent backend, its messages — and those
fetched with it that wait for the next batch, and those of a batch still filling — are
kept alive with ``in_progress`` so JetStream does not redeliver them behind our back
(they would be exported twice).

A consumer created again while the lane runs (deleted by an operator or the server)
starts after the last message the lane settled, not from the oldest one the stream
holds (see :class:`Position`); from the oldest when the stream itself was created again.

A dead-letter stream found missing is made again (``messaging.StreamKeeper``). A sink
that raises (a bug) or a dead-letter stream that cannot store a refused record never
makes the lane go round in a loop: the batch is retried after the lane's
backoff (``batch.retry_initial`` doubling up to ``batch.retry_max``). So is subscribing,
at start and whenever a consumer is gone (deleted, or its stream created again); a
stream found missing meanwhile reports the sink not ready (``/readyz``) until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from flowscope.core import codec, subjects
from flowscope.core.errors import CodecError, RecordError, grouped, listed
from flowscope.core.logs import RateLimitedLog
from flowscope.core.messaging import (
    NO_STREAM,
    StreamKeeper,
    consumer_missing,
    dead_letter,
    stream_not_found,
)
from flowscope.core.records import validate_dns, validate_flow
from flowscope.core.runtime import first_of
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.retrying import Backoff
from flowscope.exporter.settings import DEFAULT_DURABLE, BatchSettings
from flowscope.exporter.sink import ExportResult, Kind, Record, Sink, SinkClosedError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, StreamInfo

log = logging.getLogger("flowscope.exporter.consuming")

T = TypeVar("T")
DLQ_COMPONENT = "exporter"
FETCH_MESSAGES = 64  # messages per pull request (each holds a batch of records)
CRASH_LOG_INTERVAL = 10.0  # seconds between two tracebacks of a sink that keeps raising


@dataclass(frozen=True, slots=True)
class Source:
    """A stream the exporter reads, the schema its messages carry and how to check records."""

    kind: Kind
    stream: str
    subject: str
    schema: codec.Schema
    validate: Callable[[object, int], Record]


SOURCES = (
    Source(Kind.FLOW, subjects.STREAM_FLOWS, subjects.FLOWS_ALL, codec.FLOW, validate_flow),
    Source(Kind.DNS, subjects.STREAM_DNS, subjects.DNS_ALL, codec.DNS, validate_dns),
)


def stream_position(msg: Msg) -> str:
    """Which stored message this is (``FLOWSCOPE_FLOWS:1234:<stored at, µs>``): the same
    for every consumer that receives it and every redelivery, so it names the DLQ copy
    of a bad message. The time tells apart the messages of a stream deleted and created
    again, whose sequences restart at 1."""
    metadata = msg.metadata
    stored_us = round(metadata.timestamp.timestamp() * 1_000_000)
    return f"{metadata.stream}:{metadata.sequence.stream}:{stored_us}"


def durable_name(sink: str, durable: str = DEFAULT_DURABLE) -> str:
    """The durable consumer ``sink`` reads through (on each stream), of base ``durable``."""
    return f"{durable}-{sink}"


@dataclass(slots=True)
class Position:
    """How far a sink has settled one stream, as this lane knows it: where a consumer
    created again (deleted while the lane ran) starts, so the records the stream still
    holds are not all exported again.

    The floor is a stream sequence up to which every message is settled: below the
    oldest delivered message not yet acked (nak'ed or in an export), else the newest
    delivered one — or the consumer's ack floor as the server last reported it, if
    higher. A message acked out of order above one that is not is delivered again.
    What the lane cannot see holds the floor down until the server's ack floor passes
    it: messages an existing consumer had delivered before this lane subscribed, and
    deliveries that never arrived (a gap in the consumer's delivery sequence, lost with
    a connection or taken by another process sharing the consumer).
    """

    stream_created: datetime | None = None  # tells apart a stream created again
    first_seq: int = 0
    consumer_created: datetime | None = None  # whose ack floor counts
    server_floor: int | None = None
    newest: int | None = None  # newest stream sequence delivered
    delivery: int = 0  # the consumer's delivery sequence last seen
    unsettled: dict[int, datetime] = field(default_factory=dict)  # sequence: stored at
    holds: list[tuple[int, int]] = field(default_factory=list)  # floor at most, until

    def floor(self) -> int | None:
        """Every message up to this stream sequence is settled; None if unknown."""
        local = self.newest
        if local is not None:
            if self.unsettled:
                local = min(local, min(self.unsettled) - 1)
            local = min([local, *(bound for bound, _ in self.holds)])
        known = [f for f in (local, self.server_floor) if f is not None]
        return max(known) if known else None

    def of_another_stream(self, stream: StreamInfo) -> bool:
        """Whether ``stream`` was created again since this position was taken (its
        sequences restarted): another creation time, or sequences it cannot have."""
        floor = self.floor()
        return (
            stream.created != self.stream_created
            or stream.state.first_seq < self.first_seq
            or (floor is not None and stream.state.last_seq < floor)
        )

    def start(self, stream: StreamInfo) -> int | None:
        """The stream sequence a consumer created now starts from; None for the oldest
        (nothing known yet, or nothing settled that the stream still holds)."""
        first = self.first_seq = stream.state.first_seq
        for seq in [s for s in self.unsettled if s < first]:  # removed from the stream
            del self.unsettled[seq]
        floor = self.floor()
        return None if floor is None or floor < first else floor + 1

    def subscribed(self, consumer: ConsumerInfo) -> None:
        """The consumer this lane now pulls from, before anything is fetched."""
        self.consumer_created = consumer.created
        self.delivery = consumer.delivered.consumer_seq if consumer.delivered else 0
        self.acked_by_server(consumer)
        if consumer.num_ack_pending and consumer.ack_floor and consumer.delivered:
            self.holds.append((consumer.ack_floor.stream_seq, consumer.delivered.stream_seq))

    def acked_by_server(self, consumer: ConsumerInfo) -> None:
        """The current consumer's ack floor: settled, whatever this lane saw."""
        if consumer.created != self.consumer_created or consumer.ack_floor is None:
            return  # a consumer gone meanwhile, maybe of a stream gone too
        acked = consumer.ack_floor.stream_seq or 0
        self.server_floor = max(self.server_floor or 0, acked)
        self.holds = [(bound, until) for bound, until in self.holds if until > acked]
        for seq in [s for s in self.unsettled if s <= acked]:  # settled all the same
            del self.unsettled[seq]

    def delivered(self, msg: Msg) -> None:
        seq = msg.metadata.sequence
        if seq.consumer > self.delivery + 1:  # deliveries that never came
            self.holds.append((self.newest or 0, seq.stream))
        self.delivery = max(self.delivery, seq.consumer)
        self.newest = max(self.newest or 0, seq.stream)
        self.unsettled[seq.stream] = msg.metadata.timestamp

    def settled(self, msg: Msg) -> None:
        """``msg`` acked (for good: exported, dead-lettered)."""
        seq, stored = msg.metadata.sequence.stream, msg.metadata.timestamp
        if self.unsettled.get(seq) == stored:  # not a message of a stream gone since
            del self.unsettled[seq]


@dataclass(slots=True)
class Batch:
    """Records bound for one export, and which message each came from.

    ``bodies``: for a sink that writes NDJSON (``export_lines``), the records as
    NDJSON: the body of each message as it came when every record of it was valid, and
    the valid records encoded again when some went to the dead-letter subject. None
    for other sinks.
    """

    records: list[Record] = field(default_factory=list)
    spans: list[tuple[Msg, int, int]] = field(default_factory=list)  # msg, first, count
    opened: float = 0.0
    touched: float = 0.0  # when its messages were last kept alive (in_progress)
    bodies: list[bytes] | None = None

    def add(self, msg: Msg, records: list[Record], whole: bool) -> None:
        """Add a message's valid ``records``; ``whole``: they are all its records."""
        if not self.spans:
            self.opened = self.touched = time.monotonic()
        self.spans.append((msg, len(self.records), len(records)))
        self.records.extend(records)
        if self.bodies is not None:
            self.bodies.append(msg.data if whole else b"".join(codec.encode_lines(records)))

    @property
    def messages(self) -> Iterator[Msg]:
        return (msg for msg, _, _ in self.spans)


class SinkLane:
    """Everything one sink runs: start-up retries, consumers, bounded in-flight exports."""

    def __init__(
        self,
        sink: Sink,
        js: JetStreamContext,
        nc: NATS,
        batch: BatchSettings,
        metrics: ExporterMetrics,
        stopping: asyncio.Event,
        on_ready: Callable[[str, bool, str], None] = lambda *_: None,
        streams: StreamKeeper | None = None,
        durable: str = DEFAULT_DURABLE,
    ) -> None:
        self.sink = sink
        self.consumer_name = durable_name(sink.name, durable)
        self._js = js
        self._nc = nc
        self._streams = streams or StreamKeeper(None)  # makes a missing DLQ stream again
        self._batch = batch
        self._metrics = metrics
        self._stopping = stopping
        self._on_ready = on_ready
        self._slots = asyncio.Semaphore(batch.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()  # the sink's output is gone (stdout reader left)
        self._bad = RateLimitedLog(log)
        # Waits after an export raised / a dead letter could not be stored.
        self._crash_backoff = Backoff(batch.retry_initial, batch.retry_max)
        self._dlq_backoff = Backoff(batch.retry_initial, batch.retry_max)
        self._crash_logged = -CRASH_LOG_INTERVAL  # when the last traceback was logged
        self._crashes_unlogged = 0
        # Each consumer's ack_wait as the server has it: keep-alives are timed from it.
        self._ack_wait = dict.fromkeys(Kind, batch.ack_wait)
        self._positions = {kind: Position() for kind in Kind}
        self._missing: set[str] = set()  # streams read that subscribing found missing
        # Writes whole NDJSON bodies, validated, as they came (the stdout sink)
        self._export_lines: Callable[[Kind, list[bytes], int], Awaitable[ExportResult]] | None
        self._export_lines = getattr(sink, "export_lines", None)

    async def run(self) -> None:
        """Until stopping (or the sink's output closes): start the sink, then consume."""
        try:
            if await self._start_sink():
                async with asyncio.TaskGroup() as group:
                    for source in SOURCES:
                        group.create_task(self._consume(source))
                    group.create_task(self._shutdown_when_stopping())
        except asyncio.CancelledError:
            # The drain deadline passed: exports still under way (a backend that never
            # answers, a stdout pipe nobody reads) are abandoned, not awaited; their
            # messages are not acked, so they are redelivered.
            for task in self._tasks:
                task.cancel()
            raise
        finally:
            log.debug("lane settling", extra={"sink": self.sink.name, "exports": len(self._tasks)})
            try:
                await self.sink.shutdown()
                await self._settle()
            finally:  # also when the drain deadline cancels us: release connections
                await self.sink.close()
        if self._closed.is_set():
            log.info("sink output closed; stopping", extra={"sink": self.sink.name})

    async def _start_sink(self) -> bool:
        """Retry the sink's start-up (logged) until it works; False if stopped first."""
        delay = self._batch.retry_initial
        while not self._stopping.is_set():
            try:
                await self.sink.start()
                self._on_ready(self.sink.name, True, "")
                return True
            except Exception as e:  # any start-up failure of a backend is retried
                self._on_ready(self.sink.name, False, str(e))
                log.warning(
                    "sink not ready; retrying",
                    extra={"sink": self.sink.name, "error": str(e), "delay": delay},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self._batch.retry_max)
        return False

    async def _shutdown_when_stopping(self) -> None:
        await first_of(self._stopping.wait(), self._closed.wait())
        await self.sink.shutdown()  # pending retries give up: their messages are nak'ed

    def _done(self) -> bool:
        return self._stopping.is_set() or self._closed.is_set()

    async def _consume(self, source: Source) -> None:
        sub = await self._subscribe_retrying(source)
        if sub is None:
            return
        watcher = asyncio.create_task(self._watch_lag(source))
        batch = self._batch_of()
        try:
            while not self._done():
                timeout = self._batch.max_delay
                if batch.spans:  # waking in time to keep its messages alive too
                    due = batch.opened + self._batch.max_delay - time.monotonic()
                    timeout = max(0.01, min(due, self._ack_wait[source.kind] / 3))
                msgs = await self._fetch(sub, min(timeout, 1.0), source)
                if msgs is None:  # the consumer is gone
                    renewed = await self._resubscribe(source, sub)
                    if renewed is None:  # stopped meanwhile
                        break
                    sub = renewed
                    continue
                # Fetched messages not yet in a batch are kept alive while a full
                # batch waits for a slot: they were delivered too.
                fetched = deque(msgs)
                while fetched:
                    await self._take(source, fetched.popleft(), batch)
                    if len(batch.records) >= self._batch.max_records:  # full
                        await self._submit(source.kind, batch, fetched)
                        batch = self._batch_of()
                if batch.records and time.monotonic() - batch.opened >= self._batch.max_delay:
                    await self._submit(source.kind, batch)  # waited long enough
                    batch = self._batch_of()
                else:
                    await self._keep_open_alive(source.kind, batch)
            log.debug("consumer draining", extra={"sink": self.sink.name, "stream": source.stream})
            if batch.spans and not self._closed.is_set():
                await self._submit(source.kind, batch)  # flush the partial batch on drain
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # the durable consumer stays on the server

    async def _keep_open_alive(self, kind: Kind, batch: Batch) -> None:
        """Tell JetStream every ack_wait/3 that the messages of a batch still filling
        are in work: with ``max_delay`` at or above ``ack_wait`` they were redelivered
        while the batch waited for more, taken into it again, and exported twice."""
        if batch.spans and time.monotonic() - batch.touched >= self._ack_wait[kind] / 3:
            await _touch(batch.messages)
            batch.touched = time.monotonic()

    def _batch_of(self) -> Batch:
        """A new, empty batch (collecting message bodies for a sink that takes them)."""
        return Batch(bodies=[] if self._export_lines is not None else None)

    async def _resubscribe(
        self, source: Source, gone: JetStreamContext.PullSubscription
    ) -> JetStreamContext.PullSubscription | None:
        """Subscribe again (creating the consumer anew) after ``gone``'s consumer went."""
        with contextlib.suppress(Exception):
            await gone.unsubscribe()
        self._metrics.resubscribed.labels(self.sink.name).inc()
        return await self._subscribe_retrying(source)

    async def _subscribe_retrying(self, source: Source) -> JetStreamContext.PullSubscription | None:
        """Subscribe, retrying with the lane's backoff (logged) while the stream or
        JetStream is away; None if stopped first."""
        backoff = Backoff(self._batch.retry_initial, self._batch.retry_max)
        while not self._done():
            try:
                sub = await self._subscribe(source)
            except Exception as e:  # no stream (yet), JetStream away: try again
                if stream_not_found(e):
                    self._stream_found(source.stream, False)
                delay = backoff.next_delay()
                where = {"sink": self.sink.name, "stream": source.stream}
                log.warning(
                    "cannot subscribe; retrying", extra={**where, "error": str(e), "delay": delay}
                )
                await first_of(asyncio.sleep(delay), self._stopping.wait(), self._closed.wait())
                continue
            self._stream_found(source.stream, True)
            return sub
        return None

    def _stream_found(self, stream: str, found: bool) -> None:
        """Whether ``stream`` exists, as subscribing to it found: the sink is reported
        not ready while a stream it reads is missing (deleted, or lost with the
        server's store), as nothing of it reaches the sink until it is made again (by
        the enricher, as its publishes find it missing)."""
        if found == (stream not in self._missing):
            return
        if found:
            self._missing.discard(stream)
        else:
            self._missing.add(stream)
        if not self._missing:
            self._on_ready(self.sink.name, True, "")
            return
        missing = ", ".join(sorted(self._missing))
        self._on_ready(
            self.sink.name, False, f"{missing} missing: nothing to consume until made again"
        )

    async def _subscribe(self, source: Source) -> JetStreamContext.PullSubscription:
        """Create the durable consumer, or bring an existing one's ``ack_wait`` and
        ``max_ack_pending`` to the settings (JetStream lets both change), and pull from it.
        Keep-alives are timed from the ``ack_wait`` the server then reports.

        A consumer created anew starts after what this lane settled of the same stream
        (see :class:`Position`), else from the oldest message; an existing one keeps
        where it started (JetStream refuses to change it)."""
        name = self.consumer_name
        start = self._start(source, await self._js.stream_info(source.stream))
        config = ConsumerConfig(
            name=name,
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if start is None else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=self._batch.ack_wait,
            max_ack_pending=self._batch.max_in_flight * self._batch.max_records + FETCH_MESSAGES,
            filter_subject=source.subject,
        )
        with contextlib.suppress(nats.js.errors.NotFoundError):
            existing = (await self._js.consumer_info(source.stream, name)).config
            config.deliver_policy = existing.deliver_policy
            config.opt_start_seq = existing.opt_start_seq
            config.opt_start_time = existing.opt_start_time
        try:
            await self._js.add_consumer(source.stream, config)  # creates or updates
        except nats.js.errors.BadRequestError as e:  # a change the server refuses
            log.warning(
                "consumer settings not applied; keeping the consumer's",
                extra={"sink": self.sink.name, "stream": source.stream, "error": str(e)},
            )
        sub = await self._js.pull_subscribe(
            source.subject, durable=name, stream=source.stream, config=config
        )
        info = await sub.consumer_info()
        self._ack_wait[source.kind] = info.config.ack_wait or self._batch.ack_wait
        self._positions[source.kind].subscribed(info)
        return sub

    def _start(self, source: Source, stream: StreamInfo) -> int | None:
        """Where a consumer created now on ``stream`` starts (None: its oldest message)."""
        position = self._positions[source.kind]
        if position.of_another_stream(stream):  # or the first subscription
            position = Position(stream_created=stream.created, first_seq=stream.state.first_seq)
            self._positions[source.kind] = position
        start = position.start(stream)
        if start is not None:
            log.info(
                "consumer created again; resuming after the messages settled",
                extra={"sink": self.sink.name, "stream": source.stream, "start": start},
            )
        return start

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, wait: float, source: Source
    ) -> list[Msg] | None:
        """Up to FETCH_MESSAGES messages; None if the consumer is gone."""
        try:
            msgs = await sub.fetch(FETCH_MESSAGES, timeout=wait)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except nats.errors.Error as e:
            # A deleted consumer answers like a brief disconnection (no responders):
            # ask the server which it is once the connection is up.
            if self._nc.is_connected and await consumer_missing(
                self._js.consumer_info(source.stream, self.consumer_name)
            ):
                log.warning(
                    "consumer gone; subscribing again",
                    extra={"sink": self.sink.name, "stream": source.stream, "error": str(e)},
                )
                return None
            # disconnected: nats-py reconnects; try again shortly
            self._bad.warning("fetch", "fetch failed", sink=self.sink.name, error=str(e))
            await asyncio.sleep(min(wait, 0.5))
            return []
        return msgs

    async def _watch_lag(self, source: Source) -> None:
        """Publish the consumer's lag: messages not yet delivered plus delivered but not
        yet acked — everything this sink has not confirmed. Asked of the server, so it
        keeps growing while the sink is stuck and its consumer no longer fetches."""
        gauge = self._metrics.lag.labels(self.sink.name, source.stream)
        name = self.consumer_name
        while True:
            with contextlib.suppress(Exception):  # NATS away: keep the last figure
                info = await self._js.consumer_info(source.stream, name)
                gauge.set((info.num_pending or 0) + (info.num_ack_pending or 0))
                self._positions[source.kind].acked_by_server(info)
            await asyncio.sleep(max(1.0, min(5.0, self._ack_wait[source.kind] / 3)))

    async def _take(self, source: Source, msg: Msg, batch: Batch) -> None:
        """Decode one message into the batch; bad messages/records are dead-lettered."""
        self._positions[source.kind].delivered(msg)
        try:
            records = codec.decode(source.schema, msg.headers, msg.data)
        except CodecError as e:
            self._bad.warning(
                "bad-message",
                "undecodable message",
                sink=self.sink.name,
                subject=msg.subject,
                reason=str(e),
            )
            # The message is at fault, not this sink: every sink's consumer comes here
            # with it, and the DLQ stores the copy of the first one (same msg_id).
            dead = await self._publish_dead(
                msg.subject, msg.headers, msg.data, str(e), stream_position(msg)
            )
            if dead:  # counted once it is settled, not at every redelivery before
                self._metrics.bad_messages.labels(self.sink.name).inc()
                await self._ack_settled(source.kind, msg)
            return
        good, bad = [], []
        for i, record in enumerate(records):
            try:
                good.append(source.validate(record, i))
            except RecordError as e:
                bad.append((i, record, e))
        if bad and not await self._dead_letter_invalid(source.kind, msg, bad):
            return  # not dead-lettered: leave the whole message for redelivery
        if good:
            batch.add(msg, good, whole=len(good) == len(records))
        else:
            await self._ack_settled(source.kind, msg)

    async def _submit(self, kind: Kind, batch: Batch, waiting: Iterable[Msg] = ()) -> None:
        """Hand a batch to the sink once an in-flight slot is free (bounds memory).

        Waiting for a slot can last as long as the backend is down: the batch's messages,
        and ``waiting`` (fetched with them, not yet in a batch), are kept alive meanwhile,
        or JetStream would redeliver them behind our back and they would be exported twice.
        """
        while True:
            try:
                await asyncio.wait_for(self._slots.acquire(), self._ack_wait[kind] / 3)
                break
            except TimeoutError:
                await _touch(batch.messages)
                await _touch(waiting)
        self._metrics.in_flight.labels(self.sink.name).inc()
        task = asyncio.create_task(self._export(kind, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _export(self, kind: Kind, batch: Batch) -> None:
        started = time.monotonic()
        try:
            result = await self._answer(kind, batch)
        finally:
            self._slots.release()
            self._metrics.in_flight.labels(self.sink.name).dec()
        self._metrics.batch_seconds.labels(self.sink.name).observe(time.monotonic() - started)
        await self._settle_messages(kind, batch, result)

    async def _answer(self, kind: Kind, batch: Batch) -> ExportResult:
        """The sink's answer for a batch; all deferred if its output closed or it raised.

        A sink that raises has a bug: the traceback is logged (rate-limited) and the
        batch keeps its slot for the lane's backoff before it is nak'ed, so a sink that
        always raises cannot make JetStream redeliver in a tight loop.
        """
        try:
            if batch.bodies is not None and self._export_lines is not None:
                export = self._export_lines(kind, batch.bodies, len(batch.records))
            else:
                export = self.sink.export(kind, batch.records)
            result = await self._keep_alive(kind, batch, export)
        except SinkClosedError:
            self._closed.set()
            return ExportResult.all_deferred(len(batch.records))
        except Exception:  # a bug in a sink: loud, but the records stay in the stream
            delay = self._crash_backoff.next_delay()
            self._log_crash(delay)
            pause = first_of(asyncio.sleep(delay), self._stopping.wait(), self._closed.wait())
            await self._keep_alive(kind, batch, pause)
            return ExportResult.all_deferred(len(batch.records))
        self._crash_backoff.reset()
        return result

    def _log_crash(self, delay: float) -> None:
        """Log the exception being handled with its traceback, once per CRASH_LOG_INTERVAL."""
        now = time.monotonic()
        if now - self._crash_logged < CRASH_LOG_INTERVAL:
            self._crashes_unlogged += 1
            return
        log.error(
            "export failed unexpectedly; retrying after backoff",
            exc_info=True,
            extra={"sink": self.sink.name, "delay": delay, "suppressed": self._crashes_unlogged},
        )
        self._crash_logged, self._crashes_unlogged = now, 0

    async def _keep_alive(self, kind: Kind, batch: Batch, work: Awaitable[T]) -> T:
        """Await ``work``, telling JetStream every ack_wait/3 that the messages are in work."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self._ack_wait[kind] / 3)
            if done:
                return task.result()
            await _touch(batch.messages)

    async def _settle_messages(self, kind: Kind, batch: Batch, result: ExportResult) -> None:
        """Ack, dead-letter or nak each message of a finished batch; count the records
        (the refused ones once their dead-letter copy is stored: a message that comes
        back while the DLQ is away is refused again, not counted again)."""
        stored = len(batch.records) - len(result.rejected) - len(result.deferred)
        self._metrics.exported.labels(self.sink.name).inc(max(0, stored - result.unconfirmed))
        for msg, first, count in batch.spans:
            span = range(first, first + count)
            if any(i in result.deferred for i in span):
                await _nak(msg)
                continue
            refused = {
                i - first: (batch.records[i], result.rejected[i])
                for i in span
                if i in result.rejected
            }
            if refused:
                if not await self._dead_letter_refused(kind, msg, refused):
                    # Not stored: not acked either. Redelivered after the backoff, when
                    # the stored records answer 409 and the refused ones are tried again.
                    await _nak(msg, self._dlq_backoff.next_delay())
                    continue
                self._dlq_backoff.reset()
            await self._ack_settled(kind, msg)

    async def _ack_settled(self, kind: Kind, msg: Msg) -> None:
        """Ack a message settled for good, and count it settled (see :class:`Position`)."""
        self._positions[kind].settled(msg)
        await _ack(msg)

    async def _dead_letter_invalid(
        self, kind: Kind, msg: Msg, bad: list[tuple[int, Record, RecordError]]
    ) -> bool:
        """Dead-letter the records of ``msg`` that break the contract: one copy per
        distinct problem (see ``grouped``), each reason naming the places of the records
        it holds. Every sink finds the same: a copy's id names the message and its first
        record's index, so the DLQ stores one for all sinks. False if one was not stored."""
        keyed = {i: (record, error.problem) for i, record, error in bad}
        errors = {i: error for i, _, error in bad}
        return await self._dead_letter_grouped(
            kind, msg, keyed, lambda group: RecordError.summary([errors[i] for i in group])
        )

    async def _dead_letter_refused(
        self, kind: Kind, msg: Msg, refused: dict[int, tuple[Record, str]]
    ) -> bool:
        """Dead-letter the records of ``msg`` this sink's backend refused, with why (keyed
        by their index in the message): one copy per distinct reason, so each record
        keeps its own, but at most ``PROBLEM_COPIES`` apart (see ``grouped``): the rest
        share one whose reason lists theirs. This sink's verdict (another sink may refuse
        the same message): a copy's id names the sink and the index of its first record,
        the same however often the message comes back. False if a copy was not stored."""
        sink = self.sink.name
        return await self._dead_letter_grouped(
            kind,
            msg,
            refused,
            lambda group: f"{sink}: {listed([refused[i][1] for i in group])}",
            owner=f"{sink}:",
        )

    async def _dead_letter_grouped(
        self,
        kind: Kind,
        msg: Msg,
        keyed: dict[int, tuple[Record, str]],
        reason: Callable[[list[int]], str],
        owner: str = "",
    ) -> bool:
        """Dead-letter records of ``msg`` (keyed by their index in it, each with its
        grouping key), one copy per group (see ``grouped``), in order; ``reason`` gives
        a copy's reason from the indices of the records it holds. A copy's id is the
        message's stream position, ``owner`` (empty: every sink's) and the index of its
        first record. Stops at the first copy not stored: False."""
        indices = list(keyed)
        for places in grouped([key for _, key in keyed.values()]):
            group = [indices[p] for p in places]
            msg_id = f"{stream_position(msg)}:{owner}{group[0]}"
            records = [keyed[i][0] for i in group]
            if not await self._dead_letter_records(kind, msg, records, reason(group), msg_id):
                return False
        return True

    async def _dead_letter_records(
        self, kind: Kind, msg: Msg, records: list[Record], reason: str, msg_id: str
    ) -> bool:
        """Publish refused records to the DLQ (with the original subject); False if that failed."""
        encoded = codec.encode(codec.FLOW if kind is Kind.FLOW else codec.DNS, records)
        return await self._publish_dead(
            msg.subject, encoded.headers, encoded.body, reason, msg_id, len(records)
        )

    async def _publish_dead(
        self,
        subject: str,
        headers: dict[str, str] | None,
        body: bytes,
        reason: str,
        msg_id: str,
        records: int = 0,
    ) -> bool:
        """Dead-letter through JetStream, de-duplicated by ``msg_id`` (see
        ``dead_letter``); False if the stream did not confirm it. ``records`` (refused
        by the backend) are counted, failed and dead-lettered, if this copy was stored.

        A DLQ stream that is missing (deleted, lost with the server's store) is made
        again, as at start-up, before the message comes back."""
        generation = self._streams.generation
        try:
            stored = await dead_letter(
                self._nc, DLQ_COMPONENT, subject, headers, body, reason, msg_id
            )
        except Exception as e:  # NATS gone for now: the message is not acked, so not lost
            self._bad.warning("dlq-failed", "cannot dead-letter; will retry", error=repr(e))
            if isinstance(e, NO_STREAM):
                await self._streams.recreate(generation, e)
            return False
        if stored:
            self._metrics.dead_lettered.labels(self.sink.name).inc(records)
            self._metrics.failed.labels(self.sink.name).inc(records)
        return True

    async def _settle(self) -> None:
        """Wait for exports under way (the sink was told to stop retrying)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _ack(msg: Msg) -> None:
    """Ack; a failed ack (NATS reconnecting) only means a redelivery later."""
    with contextlib.suppress(Exception):
        await msg.ack()


async def _nak(msg: Msg, delay: float | None = None) -> None:
    """Nak: redelivered at once, or after ``delay`` seconds."""
    with contextlib.suppress(Exception):
        await msg.nak(delay=delay)


async def _touch(msgs: Iterable[Msg]) -> None:
    """Tell JetStream these messages are still being worked on (resets ack_wait)."""
    for msg in msgs:
        with contextlib.suppress(Exception):  # a lost in_progress only risks a redelivery
            await msg.in_progress()
