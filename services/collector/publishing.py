"""Batch raw records and publish them to ``flowscope.raw.<kind>.<node>`` on JetStream.

Per kind (flows, sockets, dns) records wait as NDJSON lines (encoded on submit, or
rendered by the producer itself: :meth:`Publisher.submit_lines`) in a short *pending*
list until the batch holds ``batch_max_records`` or its oldest record is
``batch_max_delay`` old; then they are joined (``codec.chunk_lines``, each message under
the server's max payload) into an *outbox* of ready messages. A sender task publishes
the outbox in order and waits for JetStream's ack. While NATS is down or slow the outbox
grows up to ``buffer_bytes``; past that the oldest messages are dropped and their records
counted — a failing NATS never blocks the kernel drain (which only waits in
:meth:`Publisher.catch_up` while sending succeeds), nothing crashes on a publish error,
and sending resumes by itself when NATS answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowscope.collector.metrics import CollectorMetrics
from flowscope.core import codec, subjects
from flowscope.core.errors import CodecError
from flowscope.core.logs import RateLimitedLog

log = logging.getLogger("flowscope.collector.publishing")

SCHEMAS = {"flows": codec.RAW_FLOW, "sockets": codec.RAW_SOCKET, "dns": codec.RAW_DNS}
SUBJECTS = {"flows": subjects.raw_flows, "sockets": subjects.raw_sockets, "dns": subjects.raw_dns}
HEADER_ROOM = 512  # bytes kept free under max_payload for the headers
PUBLISH_TIMEOUT = 5.0
RETRY_MAX = 2.0
MAX_IN_FLIGHT = 4  # messages per kind awaiting their JetStream ack at once
RETRY_PACE = 0.05  # s between send attempts while messages wait after a failed publish


class JetStreamPublisher(Protocol):
    """The one call publishing needs (nats-py's JetStreamContext has it)."""

    async def publish(
        self,
        subject: str,
        payload: bytes,
        timeout: float | None = ...,  # noqa: ASYNC109 - nats-py's signature
        stream: str | None = ...,
        headers: dict[str, str] | None = ...,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class PublishLimits:
    batch_max_records: int = 1000
    batch_max_delay: float = 1.0
    buffer_bytes: int = 32 * 1024 * 1024
    max_payload: int = 1024 * 1024


@dataclass(slots=True)
class _Lane:
    """Pending records and ready messages of one kind."""

    kind: str
    subject: str
    pending: list[bytes] = field(default_factory=list)  # NDJSON lines
    oldest: float = 0.0
    outbox: deque[codec.Batch] = field(default_factory=deque)
    outbox_bytes: int = 0
    failures: int = 0  # consecutive publish failures: the retry backoff grows with it
    in_flight: set[int] = field(default_factory=set)  # ids of messages being published


class Publisher:
    """Bounded, batching, never-crashing publisher of raw records."""

    def __init__(
        self, js: JetStreamPublisher, node: str, limits: PublishLimits, metrics: CollectorMetrics
    ) -> None:
        self._js = js
        self._limits = limits
        self._metrics = metrics
        self._lanes = {kind: _Lane(kind, SUBJECTS[kind](node)) for kind in SCHEMAS}
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # set whenever messages were acknowledged
        self._failed_log = RateLimitedLog(log)

    def submit(self, kind: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Queue wire dicts of one kind; never blocks."""
        if records:
            self.submit_lines(kind, codec.encode_lines(records))

    def submit_lines(self, kind: str, lines: list[bytes]) -> None:
        """Queue records of one kind already encoded as NDJSON lines (each ending in a
        newline, as ``codec.encode_lines`` writes them); never blocks."""
        if not lines:
            return
        lane = self._lanes[kind]
        if not lane.pending:
            lane.oldest = time.monotonic()
            self._wake.set()  # the sender sleeps until something is due: a batch now is
        lane.pending.extend(lines)
        if len(lane.pending) >= self._limits.batch_max_records:
            self._seal(lane)

    async def catch_up(self, kind: str) -> None:
        """Wait while ``kind``'s ready messages fill more than half of ``buffer_bytes``
        and the sender is getting them acknowledged.

        For a producer that can wait (the drain between map chunks: entries not yet
        taken out go on counting in the kernel, nothing is lost): a drain of hundreds
        of thousands of flows renders faster than JetStream acknowledges, and would
        otherwise overflow the buffer, whose bound drops the oldest messages. Returns
        at once while publishing fails (NATS down: then the bound applies, counted),
        and when no message was acknowledged for PUBLISH_TIMEOUT.
        """
        lane = self._lanes[kind]
        while lane.outbox_bytes > self._limits.buffer_bytes // 2 and not lane.failures:
            self._sent.clear()
            try:
                await asyncio.wait_for(self._sent.wait(), PUBLISH_TIMEOUT)
            except TimeoutError:
                return

    def buffered_records(self) -> int:
        return sum(len(x.pending) + sum(b.count for b in x.outbox) for x in self._lanes.values())

    async def run(self, stopping: asyncio.Event, drain_deadline: float = 5.0) -> None:
        """Send until ``stopping``; then flush what is left, for at most ``drain_deadline``."""
        while not stopping.is_set():
            self._seal_due()
            sent = await self._send_ready()
            if not sent:
                await self._sleep(stopping)
        await self.flush(drain_deadline)

    async def flush(self, deadline: float) -> None:
        """Seal everything pending and publish the outbox, giving up after ``deadline`` s."""
        for lane in self._lanes.values():
            self._seal(lane)
        end = time.monotonic() + deadline
        while any(lane.outbox for lane in self._lanes.values()) and time.monotonic() < end:
            await self._send_ready()
        for lane in self._lanes.values():
            lost = sum(b.count for b in lane.outbox)
            if lost:
                self._metrics.publish_dropped.labels(lane.kind, "shutdown").inc(lost)
                log.warning(
                    "records not published at shutdown", extra={"kind": lane.kind, "records": lost}
                )

    def _next_due(self) -> float | None:
        """Seconds until the sender has work without being woken; None: nothing to do.

        Messages still in an outbox (their publish failed) are retried at RETRY_PACE;
        else the oldest pending batch is due at its ``batch_max_delay``.
        """
        lanes = self._lanes.values()
        if any(lane.outbox for lane in lanes):
            return RETRY_PACE
        due = [lane.oldest + self._limits.batch_max_delay for lane in lanes if lane.pending]
        if due:
            return max(0.0, min(due) - time.monotonic())
        return None

    # ------------------------------------------------------------ batching

    def _seal_due(self) -> None:
        now = time.monotonic()
        for lane in self._lanes.values():
            if lane.pending and now - lane.oldest >= self._limits.batch_max_delay:
                self._seal(lane)

    def _seal(self, lane: _Lane) -> None:
        """Join the pending lines into messages under max payload, into the outbox."""
        lines, lane.pending = lane.pending, []
        limit = self._limits.max_payload - HEADER_ROOM
        for start in range(0, len(lines), self._limits.batch_max_records):
            for batch in self._join(
                lane.kind, lines[start : start + self._limits.batch_max_records], limit
            ):
                lane.outbox.append(batch)
                lane.outbox_bytes += len(batch.body)
        self._bound(lane)
        self._wake.set()

    def _join(self, kind: str, lines: list[bytes], limit: int) -> list[codec.Batch]:
        schema = SCHEMAS[kind]
        try:
            return list(codec.chunk_lines(schema, lines, limit))
        except CodecError:
            # A record exceeds a whole message: publish the others, count those.
            fitting = [line for line in lines if len(line) <= limit]
            self._metrics.publish_dropped.labels(kind, "too_large").inc(len(lines) - len(fitting))
            return list(codec.chunk_lines(schema, fitting, limit))

    def _bound(self, lane: _Lane) -> None:
        """Drop the oldest messages not being sent while the outbox exceeds its budget."""
        while lane.outbox_bytes > self._limits.buffer_bytes:
            index = next(
                (i for i, b in enumerate(lane.outbox) if id(b) not in lane.in_flight), None
            )
            if index is None:
                break
            victim = lane.outbox[index]
            del lane.outbox[index]
            lane.outbox_bytes -= len(victim.body)
            self._metrics.publish_dropped.labels(lane.kind, "buffer_full").inc(victim.count)
        self._metrics.publish_buffered_bytes.labels(lane.kind).set(lane.outbox_bytes)

    # ------------------------------------------------------------ sending

    async def _send_ready(self) -> bool:
        """Publish the oldest messages of every lane; False when nothing was sent."""
        results = await asyncio.gather(*(self._send_lane(lane) for lane in self._lanes.values()))
        return any(results)

    async def _send_lane(self, lane: _Lane) -> bool:
        """Up to MAX_IN_FLIGHT messages at once: JetStream acks pipeline, one RTT each."""
        batches = list(itertools.islice(lane.outbox, MAX_IN_FLIGHT))
        if not batches:
            return False
        lane.in_flight = {id(b) for b in batches}
        try:
            results = await asyncio.gather(*(self._publish(lane, b) for b in batches))
        finally:
            lane.in_flight = set()
        done = {id(b) for b, ok in zip(batches, results, strict=True) if ok}
        if done:
            kept = deque(b for b in lane.outbox if id(b) not in done)
            lane.outbox_bytes = sum(len(b.body) for b in kept)
            lane.outbox = kept
            self._metrics.publish_buffered_bytes.labels(lane.kind).set(lane.outbox_bytes)
            self._sent.set()
        return bool(done)

    async def _publish(self, lane: _Lane, batch: codec.Batch) -> bool:
        try:
            await self._js.publish(
                lane.subject, batch.body, timeout=PUBLISH_TIMEOUT, headers=batch.headers
            )
        except Exception as e:  # nats-py: timeouts, no responders, disconnected, ...
            self._metrics.publish_errors.labels(lane.kind).inc()
            self._failed_log.warning(
                f"publish-failed-{lane.kind}", "publish failed; will retry", error=repr(e)
            )
            lane.failures += 1
            await asyncio.sleep(min(RETRY_MAX, 0.05 * 2**lane.failures))
            return False
        lane.failures = 0
        self._metrics.publish_batches.labels(lane.kind).inc()
        self._metrics.publish_bytes.labels(lane.kind).inc(len(batch.body))
        self._metrics.publish_records.labels(lane.kind).inc(batch.count)
        return True

    async def _sleep(self, stopping: asyncio.Event) -> None:
        """Until woken (a batch started or sealed), stopping, or the next thing is due.

        No polling while idle: the sender used to wake every 50 ms, which was most of
        an idle collector's CPU. The wait is computed after clearing the wake flag, with
        no await in between, so a submit cannot slip past unnoticed.
        """
        self._wake.clear()
        timeout = self._next_due()
        waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stopping.wait())}
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
