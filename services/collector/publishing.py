"""Batch raw records and publish them to ``flowscope.raw.<kind>.<node>`` on JetStream.

Per kind (flows, sockets, dns) records wait as NDJSON lines (encoded on submit, or
rendered by the producer itself: :meth:`Publisher.submit_lines`) in a short *pending*
list until the batch holds ``batch_max_records`` or its oldest record is
``batch_max_delay`` old; then they are joined (``codec.chunk_lines``, each message under
the server's max payload) into an *outbox* of ready messages. A sender task publishes
the outbox in order, one message at a time per kind: the next is sent once JetStream
has acknowledged the one before, so the stream holds each kind's records in the order they
were submitted whichever publish fails (a socket's ``close`` is never stored before its
``connect``). While NATS is down or slow the outbox grows up to ``buffer_bytes``; past
that the oldest messages are dropped and their records counted — a failing NATS never
blocks the kernel drain (which only waits in :meth:`Publisher.catch_up` while sending
succeeds), nothing crashes on a publish error, and sending resumes by itself when NATS
answers again. NATS may come back without its streams (its JetStream store lost, a fresh
server): then no stream answers a publish, and the publisher recreates the streams
(``messaging.ensure_streams``, as at start-up, through a ``messaging.StreamKeeper``: one
attempt for all kinds, with backoff) before the failed message's retry.

Every message gets a ``Nats-Msg-Id`` when it is sealed (node, kind, a random id of this
publisher, a sequence number), the same on every retry: JetStream stores it once. Retries
do send copies — while nats-py reconnects it buffers each attempt and sends them all when
the server is back, and an attempt may time out after the server stored it — and the raw
stream's duplicate window (the server's default, two minutes: ``core.subjects``) drops
them. Copies buffered in the client arrive together on reconnection, so the window only
has to cover one retry (PUBLISH_TIMEOUT + RETRY_MAX); what it cannot cover is a message
stored just before the connection broke whose ack was lost, when NATS then stays away
longer than the window: that message may be stored twice.

At shutdown whatever was not acknowledged — the flush deadline passed, or the task was
cancelled — is counted as ``dropped{reason="shutdown"}``: published + dropped = submitted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flowscope.collector.metrics import CollectorMetrics
from flowscope.core import codec, subjects
from flowscope.core.errors import CodecError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.messaging import MSG_ID_HEADER, NO_STREAM, StreamKeeper
from nats.errors import MaxPayloadError

log = logging.getLogger("flowscope.collector.publishing")

SCHEMAS = {"flows": codec.RAW_FLOW, "sockets": codec.RAW_SOCKET, "dns": codec.RAW_DNS}
SUBJECTS = {"flows": subjects.raw_flows, "sockets": subjects.raw_sockets, "dns": subjects.raw_dns}
HEADER_ROOM = 512  # bytes kept free under max_payload for the headers
PUBLISH_TIMEOUT = 5.0
RETRY_MAX = 2.0
# Doublings of the retry backoff counted at most: 0.05 s * 2**6 is past RETRY_MAX, and
# 2**1024 is no float (after ~1024 failures in a row, a NATS away for half an hour or
# more, computing the backoff raised OverflowError and the publisher task died).
RETRY_DOUBLINGS = 6
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
    sending: codec.Batch | None = None  # the message being published (never dropped)
    sealed: int = 0  # messages sealed so far: the sequence in their Nats-Msg-Id


class Publisher:
    """Bounded, batching, never-crashing publisher of raw records."""

    def __init__(
        self,
        js: JetStreamPublisher,
        node: str,
        limits: PublishLimits,
        metrics: CollectorMetrics,
        streams: StreamKeeper | None = None,
    ) -> None:
        """``streams`` makes the streams again (the service's keeper, whose ensure is
        ``messaging.ensure_streams``) when a publish finds none, one recreation for every
        kind; None: the publisher waits for someone else to."""
        self._js = js
        self._streams = streams or StreamKeeper(None)
        self._limits = limits
        # Message bodies are sealed under this; lowered when NATS comes back with a
        # smaller max_payload than the one it had when the collector connected.
        self._body_limit = limits.max_payload - HEADER_ROOM
        self._metrics = metrics
        self._lanes = {kind: _Lane(kind, SUBJECTS[kind](node)) for kind in SCHEMAS}
        # Restarted, the collector counts from 0 again: the random part keeps its ids
        # apart from those of the process before (still in the duplicate window).
        self._msg_id_prefix = f"{subjects.token(node)}.{secrets.token_hex(8)}"
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
        """Send until ``stopping``; then flush what is left, for at most ``drain_deadline``.

        Records still unacknowledged when it returns or is cancelled (the runtime's own
        drain deadline) are counted as dropped at shutdown.
        """
        try:
            while not stopping.is_set():
                self._seal_due()
                sent = await self._send_ready(math.inf)
                if not sent:
                    await self._sleep(stopping)
            await self.flush(drain_deadline)
        finally:
            self._drop_leftovers()

    async def flush(self, deadline: float) -> None:
        """Seal everything pending and publish the outbox, giving up after ``deadline`` s:
        no publish attempt or retry backoff runs past it."""
        for lane in self._lanes.values():
            self._seal(lane)
        end = time.monotonic() + deadline
        while any(lane.outbox for lane in self._lanes.values()) and time.monotonic() < end:
            await self._send_ready(end)

    def _drop_leftovers(self) -> None:
        """Count (and forget) every record not acknowledged as dropped at shutdown."""
        for lane in self._lanes.values():
            lost = len(lane.pending) + sum(b.count for b in lane.outbox)
            lane.pending, lane.outbox, lane.outbox_bytes = [], deque(), 0
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
        for start in range(0, len(lines), self._limits.batch_max_records):
            for batch in self._join(
                lane.kind, lines[start : start + self._limits.batch_max_records], self._body_limit
            ):
                lane.outbox.append(self._identified(lane, batch))
                lane.outbox_bytes += len(batch.body)
        self._bound(lane)
        self._wake.set()

    def _identified(self, lane: _Lane, batch: codec.Batch) -> codec.Batch:
        """The batch with its ``Nats-Msg-Id``, fixed now so that every retry carries it."""
        lane.sealed += 1
        msg_id = f"{self._msg_id_prefix}.{lane.kind}.{lane.sealed}"
        return dataclasses.replace(batch, headers={**batch.headers, MSG_ID_HEADER: msg_id})

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
            index = next((i for i, b in enumerate(lane.outbox) if b is not lane.sending), None)
            if index is None:
                break
            victim = lane.outbox[index]
            del lane.outbox[index]
            lane.outbox_bytes -= len(victim.body)
            self._metrics.publish_dropped.labels(lane.kind, "buffer_full").inc(victim.count)
        self._metrics.publish_buffered_bytes.labels(lane.kind).set(lane.outbox_bytes)

    # ------------------------------------------------------------ sending

    async def _send_ready(self, end: float) -> bool:
        """Publish the oldest message of every lane, each attempt over by ``end``
        (``time.monotonic()``); False when nothing was sent."""
        results = await asyncio.gather(
            *(self._send_lane(lane, end) for lane in self._lanes.values())
        )
        return any(results)

    async def _send_lane(self, lane: _Lane, end: float) -> bool:
        """The lane's oldest message, taken out of the outbox once JetStream acknowledged it.

        One at a time, not pipelined: of several messages in flight one may fail while a
        later one is stored, and its retry would then be stored after it.
        """
        if not lane.outbox:
            return False
        batch = lane.sending = lane.outbox[0]
        try:
            sent = await self._publish(lane, batch, end)
        finally:
            lane.sending = None
        if sent:
            lane.outbox.popleft()
            lane.outbox_bytes -= len(batch.body)
            self._metrics.publish_buffered_bytes.labels(lane.kind).set(lane.outbox_bytes)
            self._sent.set()
        return sent

    async def _publish(self, lane: _Lane, batch: codec.Batch, end: float) -> bool:
        left = end - time.monotonic()
        if left <= 0:
            return False
        generation = self._streams.generation
        try:
            await self._js.publish(
                lane.subject, batch.body, timeout=min(PUBLISH_TIMEOUT, left), headers=batch.headers
            )
        except MaxPayloadError:
            self._metrics.publish_errors.labels(lane.kind).inc()
            self._split_refused(lane, batch)
            return False
        except Exception as e:  # nats-py: timeouts, no responders, disconnected, ...
            self._metrics.publish_errors.labels(lane.kind).inc()
            self._failed_log.warning(
                f"publish-failed-{lane.kind}", "publish failed; will retry", error=repr(e)
            )
            if isinstance(e, NO_STREAM):
                await self._streams.recreate(generation, e, end)
            lane.failures += 1
            doublings = min(lane.failures, RETRY_DOUBLINGS)
            backoff = min(RETRY_MAX, 0.05 * 2**doublings, end - time.monotonic())
            await asyncio.sleep(max(0.0, backoff))
            return False
        lane.failures = 0
        self._metrics.publish_batches.labels(lane.kind).inc()
        self._metrics.publish_bytes.labels(lane.kind).inc(len(batch.body))
        self._metrics.publish_records.labels(lane.kind).inc(batch.count)
        return True

    def _split_refused(self, lane: _Lane, batch: codec.Batch) -> None:
        """Put the records of ``batch``, which the client refused as larger than the
        server's max_payload, back at the head of the outbox in smaller messages.

        NATS came back with a smaller max_payload than the one the messages were sealed
        for: every retry would be refused the same way, and the kind would publish
        nothing any more. The client does not say the new limit; halving the body (and
        keeping the header room under it) reaches it in a few refusals, and later
        messages are sealed that small. A record refused alone is counted as too large.
        """
        self._body_limit = min(self._body_limit, len(batch.body) // 2 - HEADER_ROOM)
        log.warning(
            "a message was refused as too large for NATS; sending its records again smaller",
            extra={"kind": lane.kind, "bytes": len(batch.body), "limit": self._body_limit},
        )
        lane.outbox.popleft()  # ``batch``: the message being sent is never dropped
        lane.outbox_bytes -= len(batch.body)
        lines = batch.body.splitlines(keepends=True)
        parts = [self._identified(lane, b) for b in self._join(lane.kind, lines, self._body_limit)]
        lane.outbox.extendleft(reversed(parts))
        lane.outbox_bytes += sum(len(b.body) for b in parts)
        self._metrics.publish_buffered_bytes.labels(lane.kind).set(lane.outbox_bytes)

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
