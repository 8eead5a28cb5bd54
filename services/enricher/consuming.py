"""NATS in and out: the shared work consumers, the per-replica state feeds, publishing.

*Work* — raw flow batches, and raw DNS batches (each becomes DNS records) — is shared:
one durable pull consumer per kind on ``FLOWSCOPE_RAW``, the same durable name in every
replica, explicit acks sent only after the enriched output was published to JetStream
and acknowledged. A replica that dies leaves its unacked messages to be redelivered to
another after ``ack_wait``; the enriched messages carry a ``Nats-Msg-Id`` derived from
the raw message's stream sequence and stored time, so a batch published just before the
crash is not stored twice (JetStream's duplicate window).

*State* — socket events and DNS answers — is needed by every replica to join any flow,
so each replica reads all of it through its own ordered consumer, starting
``state_lookback`` seconds in the past. Raw socket batches are also read by a (cheap)
shared work consumer whose only job is to dead-letter bad ones exactly once.

Raw flow batches are held ``merge_window`` seconds after they arrive before being
enriched, so that the other node's socket events of a cross-node connection are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from flowscope.core import codec, messaging, subjects
from flowscope.core.errors import CodecError, RecordError, grouped
from flowscope.core.logs import RateLimitedLog
from flowscope.enricher.enriching import Enricher, Output
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.publishing import (
    ATOMIC_DISABLED,
    ATOMIC_DUPLICATE,
    ATOMIC_MAX,
    MSG_ID_HEADER,
    AckedPublisher,
    Message,
    NoStreamError,
    PublishError,
    cancel_all,
    duplicate,
    merge_lines,
)
from flowscope.enricher.settings import ConsumerSettings
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError, ServerError
from prometheus_client import Counter

log = logging.getLogger("flowscope.enricher")
COMPONENT = "enricher"
PAYLOAD_HEADROOM = 4096  # bytes left for headers under the server's max payload
HANDLERS = 8  # raw batches awaiting their publish acknowledgements at once, per kind
GROUP_MAX = 8  # raw flow batches due together published as one atomic batch, at most
# raw records in such a group, at most: two raw batches of the collector's 1 000. Larger
# groups cut nats-server's CPU further but cost the enricher more than they save it: a
# frame of several MB is more than the socket takes at once, and its rest is copied
# twice onto fresh pages (docs/performance.md, "Raw batches published together")
GROUP_RECORDS = 2048
PUBLISH_TIMEOUT = 10.0  # seconds for JetStream to acknowledge one raw batch's output
ATOMIC_RETRY = 60.0  # seconds without atomic batches after a stream refused them
DONE = "done"  # how the last message's Nats-Msg-Id ends: the raw batch's marker
LOST_CHECK = 5.0  # seconds of idle fetching between asking whether a work consumer exists
FEED_CHECK = 2.0  # seconds between asking whether the state feeds' consumers exist


@dataclass(frozen=True, slots=True)
class Work:
    """One kind of shared work: which raw subjects, under which durable suffix."""

    kind: str  # flow, dns, socket
    subject: str
    suffix: str


WORK = (
    Work("flow", f"{subjects.RAW_FLOWS}.>", "flows"),
    Work("dns", f"{subjects.RAW_DNS}.>", "dns"),
    Work("socket", f"{subjects.RAW_SOCKETS}.>", "sockets"),
)
SCHEMAS = {"flow": codec.RAW_FLOW, "dns": codec.RAW_DNS, "socket": codec.RAW_SOCKET}


class Published(enum.Enum):
    """How publishing a raw batch's output ended; false when it is not known to be stored.

    A raw batch's metrics count with the attempt that stores its output anew — in
    JetStream terms, its marker (see :meth:`Pipeline._publish`): an attempt that finds
    the output stored by an earlier one (whose ack was lost, or which is still going)
    counts nothing, so that a batch counts once however often it comes back."""

    NOT = "not stored"  # the raw batch is nak'ed and comes back
    NEW = "stored anew"  # by this attempt: it counts the batch
    BEFORE = "stored before"  # by an earlier attempt, which counted it

    def __bool__(self) -> bool:
        return self is not Published.NOT


class Pipeline:
    """Decoding, enriching, publishing and acknowledging raw messages.

    A stream that is missing when its records are published (deleted, or lost with the
    server's store) is made again through ``streams`` (``messaging.StreamKeeper``), the
    raw batch redelivered meanwhile; ``report`` is told (ready, detail) whether every
    stream this pipeline publishes to took its last publish, for ``/readyz``.
    """

    def __init__(
        self,
        nc: NATS,
        enricher: Enricher,
        metrics: Metrics,
        streams: messaging.StreamKeeper | None = None,
        report: Callable[[bool, str], None] = lambda *_: None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.enricher = enricher
        self.metrics = metrics
        self.bad_log = RateLimitedLog(log)
        self.max_bytes = max(nc.max_payload - PAYLOAD_HEADROOM, 1024)
        self.publisher = AckedPublisher(nc)
        self.streams = streams or messaging.StreamKeeper(None)
        self._report = report
        self._missing: set[str] = set()  # streams whose last publish found none
        # monotonic time from which atomic batches are used (inf: never; see use_atomic)
        self.atomic_after = math.inf
        # the output's last message carries the raw batch's marker id (see _publish); off
        # for good if the stream ever stores the question whether a marker is stored
        self.markers = True

    # ------------------------------------------------------------ work

    async def handle(self, kind: str, msg: Msg) -> None:
        """Process one raw work message to completion: publish, then ack (or DLQ + term)."""
        if msg.metadata.num_delivered > 1:
            self.metrics.redelivered.labels(kind).inc()
        output = await self._enrich(kind, msg)
        if output is None:
            return
        if kind == "flow":
            published = await self._publish(codec.FLOW, output, msg)
        elif kind == "dns":
            published = await self._publish(codec.DNS, output, msg)
        else:
            published = Published.NEW
        await self._settle_output(kind, msg, output, published)

    async def handle_flows(self, msgs: list[Msg]) -> None:
        """Several raw flow batches due at once (:func:`_group`), to completion: each
        enriched in order, their outputs published as *one* atomic batch
        (:meth:`_publish_group`), then each acked. A subject's records of the whole group
        go in one message, so nats-server stores and delivers fewer messages than the
        batches would take one by one (docs/enricher.md, "Raw batches published
        together"). A redelivered batch takes :meth:`handle`'s way."""
        group: list[tuple[Msg, Output]] = []
        for msg in msgs:
            if msg.metadata.num_delivered > 1:  # its marker is asked first: on its own
                await self.handle("flow", msg)
            elif (output := await self._enrich("flow", msg)) is not None:
                group.append((msg, output))
        results: list[Published]
        if len(group) > 1 and (published := await self._publish_group(group)) is not None:
            results = [published] * len(group)
        else:  # not as one: each its own way, as handle publishes it
            results = await asyncio.gather(
                *(self._publish(codec.FLOW, output, msg) for msg, output in group)
            )
        for (msg, output), stored in zip(group, results, strict=True):
            await self._settle_output("flow", msg, output, stored)

    async def _enrich(self, kind: str, msg: Msg) -> Output | None:
        """A raw work message's output; None when it cannot be decoded (dead-lettered
        and terminated by :meth:`_reject`)."""
        schema = SCHEMAS[kind]
        try:
            if kind == "flow":  # decoded by the enricher (its compiled core reads lines)
                return self.enricher.flow_batch(msg.headers, msg.data)
            records = codec.decode(schema, msg.headers, msg.data)
        except CodecError as e:
            await self._reject(kind, msg, e)
            return None
        if kind == "dns":
            return self.enricher.dns(records)
        return Output(bad=self.enricher.check_sockets(records))

    async def _settle_output(
        self, kind: str, msg: Msg, output: Output, published: Published
    ) -> None:
        """After a raw message's output was published (or not): counted if this attempt
        stored it (see :class:`Published`), its bad records dead-lettered, acked; nak'ed
        for a redelivery when either did not happen."""
        if not published:
            await _settle(msg.nak(delay=1.0), "nak", self)
            return
        if published is Published.NEW:
            self._count(kind, output)
        if output.bad and not await self._dead_letter_records(kind, SCHEMAS[kind], msg, output.bad):
            await _settle(msg.nak(delay=1.0), "nak", self)
            return
        await _settle(msg.ack(), "ack", self)

    def _count(self, kind: str, output: Output) -> None:
        """Fold a raw batch's tally into the metrics."""
        if output.oversize:  # enriched but not published
            output.tally.records_out -= output.oversize
            self.metrics.oversize_records.labels(kind).inc(output.oversize)
        if kind == "flow":
            self.metrics.add_flows(output.tally)
        elif kind == "dns":
            self.metrics.add_dns(output.tally)

    async def _publish_group(self, group: list[tuple[Msg, Output]]) -> Published | None:
        """Fresh raw flow batches' outputs as one atomic batch: their lines merged by
        subject (``merge_lines``), each content message's ``Nats-Msg-Id`` under the first
        batch's id and the group's size, and the last k messages — one per batch —
        carrying the k batches' markers (see :meth:`_publish`), so a batch redelivered
        alone finds its own. NEW once stored (an atomic batch holding a stored id is
        refused, so all of it is new); NOT when the outcome is not known (a timeout, no
        stream: the batches are redelivered and ask for their markers);
        None, nothing stored, when the group cannot go as one — markers or atomic
        batches off, an output the core did not render, fewer subjects than batches,
        more than :data:`ATOMIC_MAX`, a message over the size limit, the stream's refusal
        — and each batch is then published on its own."""
        if not self.markers or self.atomic_after > time.monotonic():
            return None
        if any(output.by_subject or output.rendered is None for _, output in group):
            return None
        ids = [raw_message_id(msg.metadata) for msg, _ in group]
        prefix = f"{msg_id_prefix(codec.FLOW, ids[0])}{len(ids)}:"
        markers = tuple(marker_id(codec.FLOW, raw_id) for raw_id in ids)
        stream, generation = subjects.STREAM_FLOWS, self.streams.generation
        try:
            merged = merge_lines([output.rendered for _, output in group])
            future = await self.publisher.publish_lines_atomic(
                merged, codec.FLOW.header, prefix, markers, self.max_bytes
            )
            if future is None:
                return None
            await asyncio.wait_for(future, PUBLISH_TIMEOUT)
        except Exception as e:  # timeouts, no stream: every batch of it comes back
            if isinstance(e, PublishError) and e.code:  # refused: nothing of it was stored
                return None
            await self._publish_failed(stream, e, generation)
            return Published.NOT
        self._found(stream)
        self.metrics.grouped_batches.inc(len(group))
        return Published.NEW

    async def _publish(self, schema: codec.Schema, output: Output, msg: Msg) -> Published:
        """Publish every subject's records to JetStream; true once all are stored (NEW
        when this attempt stored the marker, BEFORE when an earlier one had).

        With atomic batches (:meth:`use_atomic`) a raw batch's output goes out as one
        batch per :data:`ATOMIC_MAX` messages, acknowledged once; otherwise, and for a
        batch the stream refuses, message by message, pipelined (:class:`AckedPublisher`).
        Either way bounded by ``PUBLISH_TIMEOUT``.

        Stored once. A message's ``Nats-Msg-Id`` is the raw message's stream sequence
        and stored time (:func:`msg_id_prefix`), its subject and its chunk number, so a raw batch
        enriched again (redelivered after ``ack_wait``: its replica died, or its acks
        were lost) into the same messages is stored once. But which subject a record
        goes to can depend on a replica's join state (a socket event one replica has
        and a restarted one has not replayed orients a flow the other way), so the
        output's last message carries the raw batch's *marker* id instead
        (``<prefix>done``), and is stored only with or after all the others: it is the
        commit of the (last) atomic batch; one by one, it is sent once the others are
        acknowledged. A redelivered raw batch, and a batch refused for a duplicate id,
        ask the stream whether the marker is stored (:meth:`AckedPublisher.stored`): if
        it is, an earlier attempt stored the whole output, whatever it held; if not, the
        refused messages go one by one, JetStream dropping those stored already, and the
        marker's ack says whether it was one of them.
        """
        raw_id = raw_message_id(msg.metadata)
        stream = subjects.STREAM_FLOWS if schema is codec.FLOW else subjects.STREAM_DNS
        generation = self.streams.generation
        try:
            left = await self._left_one_by_one(schema, output, msg, raw_id)
            published = left if isinstance(left, Published) else await self._publish_each(left)
        except Exception as e:  # timeouts, no stream, stream errors: retry the batch
            await self._publish_failed(stream, e, generation)
            return Published.NOT
        self._found(stream)
        return published

    async def _left_one_by_one(
        self, schema: codec.Schema, output: Output, msg: Msg, raw_id: str
    ) -> list[Message] | Published:
        """:meth:`_publish` up to its one-by-one step: the messages left for it, or how
        the whole output came to be stored — BEFORE, by an earlier attempt (a redelivered
        raw batch whose marker is stored, an atomic batch refused for it); NEW, now in
        atomic batches. With atomic batches off, all of :meth:`_messages`; else what
        atomic batches left (:meth:`_refused`). Errors are raised."""
        if msg.metadata.num_delivered > 1 and await self._marked(schema, output, raw_id):
            return Published.BEFORE
        if self.atomic_after <= time.monotonic():
            refused = await self._publish_framed(schema, output, raw_id)
            if refused is True:
                return Published.NEW
            messages = self._messages(schema, output, raw_id)
            if isinstance(refused, PublishError):
                left = await self._refused(refused, messages, messages)
                return Published.BEFORE if left is None else left
            return await self._publish_atomic(messages)
        return self._messages(schema, output, raw_id)

    async def _publish_failed(self, stream: str, error: Exception, generation: int) -> None:
        """After publishing a raw batch's output to ``stream`` failed with ``error``
        (``generation``: the stream keeper's when it started): markers off if the stream
        stored the question whether one is stored, logged, the streams made again if
        none captured it (:meth:`_no_stream`)."""
        if isinstance(error, PublishError) and error.unexpected:
            self.markers = False  # (the stream stored the question: see __init__)
            self.bad_log.warning(
                "markers-off", "the stream stored a question: raw batch markers off, "
                "a crash can now store a record twice", error=str(error),
            )  # fmt: skip
        self.bad_log.warning("publish", "publishing enriched records failed", error=repr(error))
        await self._no_stream(stream, error, generation)

    async def _no_stream(self, stream: str, error: Exception, generation: int) -> None:
        """After a publish to ``stream`` failed with ``error``: if no stream captured it,
        report not ready and make the streams again (``generation``: the keeper's when
        the publish started)."""
        if not isinstance(error, (NoStreamError, *messaging.NO_STREAM)):
            return
        if stream not in self._missing:
            self._missing.add(stream)
            self._report_streams()
        await self.streams.recreate(generation, error)

    def _found(self, stream: str) -> None:
        """A publish to ``stream`` was stored: ready again if it was missing."""
        if stream in self._missing:
            self._missing.discard(stream)
            self._report_streams()

    def _report_streams(self) -> None:
        if not self._missing:
            self._report(True, "publishing")
            return
        missing = ", ".join(sorted(self._missing))
        self._report(False, f"{missing} missing: nothing published; making the streams again")

    async def _publish_framed(
        self, schema: codec.Schema, output: Output, raw_id: str
    ) -> PublishError | bool | None:
        """The usual raw batch in one piece: its flow lines framed by the compiled core as
        one atomic batch of :meth:`_messages`'s messages. True when stored; the stream's
        refusal (nothing was stored then); None when framing does not apply (see
        ``AckedPublisher.publish_lines_atomic``). Unless stored, :meth:`_publish` goes
        the general way. Other errors (no stream, a timeout) are raised."""
        if output.by_subject:
            return None
        lines = output.lines if output.rendered is None else output.rendered
        future = await self.publisher.publish_lines_atomic(
            lines, schema.header, msg_id_prefix(schema, raw_id), DONE if self.markers else None,
            self.max_bytes,
        )  # fmt: skip
        if future is None:
            return None
        try:
            await asyncio.wait_for(future, PUBLISH_TIMEOUT)
        except PublishError as e:
            if not e.code:
                raise
            return e
        return True

    def _messages(self, schema: codec.Schema, output: Output, raw_id: str) -> list[Message]:
        """The enriched messages of one raw batch, each with its ``Nats-Msg-Id`` (the last
        one the raw batch's marker, see :meth:`_publish`).

        A subject's lines that fit in one message (the usual case: its share of a raw
        batch) are joined here; ``codec.chunk_lines`` would make the same one message
        through a generator and a ``Batch`` per subject (~1 µs, ~320 times per batch).
        """
        messages: list[Message] = []
        msg_id = msg_id_prefix(schema, raw_id)
        output.oversize = 0
        records = [(subject, codec.encode_lines(r)) for subject, r in output.by_subject.items()]
        for subject, lines in [*records, *output.lines.items()]:
            body = b"".join(lines)  # joined first: a subject over max_bytes is rare
            if lines and len(body) <= self.max_bytes:
                bodies = [(body, len(lines))]
            else:
                chunks = codec.chunk_lines(schema, self._fitting(lines, output), self.max_bytes)
                bodies = [(chunk.body, chunk.count) for chunk in chunks]
            for n, (body, count) in enumerate(bodies):
                headers = {
                    codec.SCHEMA_HEADER: schema.header,
                    codec.COUNT_HEADER: str(count),
                    MSG_ID_HEADER: f"{msg_id}{subject}:{n}",
                }
                messages.append((subject, body, headers))
        if messages and self.markers:
            messages[-1][2][MSG_ID_HEADER] = msg_id + DONE
        return messages

    def _fitting(self, lines: list[bytes], output: Output) -> list[bytes]:
        """The lines that fit in one message. A larger record is dropped alone (no NATS
        message can carry it, to its subject or to the dead-letter subject): counted in
        ``output.oversize`` and logged; the rest of its subject is published."""
        fitting = [line for line in lines if len(line) <= self.max_bytes]
        if len(fitting) < len(lines):
            output.oversize += len(lines) - len(fitting)
            self.bad_log.warning(
                "oversize", "enriched record too large for one message, dropped",
                count=len(lines) - len(fitting), largest=max(map(len, lines)),
                max_bytes=self.max_bytes,
            )  # fmt: skip
        return fitting

    async def _publish_atomic(self, messages: list[Message]) -> list[Message] | Published:
        """Publish as atomic batches; returns the messages still to publish one by one,
        or how all of them came to be stored: NEW, by these batches; BEFORE, a batch
        refused for a duplicate id found the marker stored by an earlier attempt.

        The last batch, which holds the marker (see :meth:`_publish`), goes once the
        others are stored, and one by one after them when one of them was refused. A
        refused batch stored nothing (:meth:`_refused` says what to do with it); other
        errors (no stream, timeouts) are raised and the whole raw batch is retried.
        """
        groups = [messages[i : i + ATOMIC_MAX] for i in range(0, len(messages), ATOMIC_MAX)]
        left: list[Message] = []
        for batch in (groups[:-1], groups[-1:]):
            if left:  # an earlier batch was refused: the marker's goes after it
                return left + batch[0]
            acks: list[asyncio.Future[Any]] = []
            try:
                for group in batch:
                    acks.append(await self.publisher.publish_atomic(group))
                results = await asyncio.wait_for(
                    asyncio.gather(*acks, return_exceptions=True), PUBLISH_TIMEOUT
                )
            except BaseException:
                cancel_all(acks)
                raise
            for group, result in zip(batch, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if not isinstance(result, PublishError) or not result.code:
                    raise result
                refused = await self._refused(result, group, messages)
                if refused is None:
                    return Published.BEFORE
                left.extend(refused)
        return left or Published.NEW

    async def _refused(
        self, refusal: PublishError, group: list[Message], output: list[Message]
    ) -> list[Message] | None:
        """What to publish one by one of an atomic batch the stream refused (nothing of it
        was stored): None, nothing, when it was refused for a duplicate id and the
        output's marker (its last message's id) is stored — an earlier attempt stored it
        all; else the whole batch. The refusals seen besides duplicates: more than 50 batches
        in flight on the stream (many replicas at once); a batch larger than the
        server's limit. A stream that does not allow atomic batches (changed behind our
        back) turns them off for a minute."""
        if refusal.code == ATOMIC_DISABLED:
            self.atomic_after = time.monotonic() + ATOMIC_RETRY
            self.bad_log.warning("atomic", "stream refuses atomic batches", error=str(refusal))
        elif refusal.code == ATOMIC_DUPLICATE and self.markers:
            subject, _, headers = output[-1]
            stored = self.publisher.stored(
                subject, headers[MSG_ID_HEADER], headers[codec.SCHEMA_HEADER]
            )
            if await asyncio.wait_for(stored, PUBLISH_TIMEOUT):
                return None
        return group

    async def _marked(self, schema: codec.Schema, output: Output, raw_id: str) -> bool:
        """Whether the raw batch's marker is stored (see :meth:`_publish`): then an
        earlier attempt stored its whole output."""
        if not self.markers:
            return False
        if output.rendered is not None:
            subject = next(iter(output.rendered.subjects), None)
        else:  # any subject of the output: the stream that captures it is the one asked
            subject = next(iter([*output.by_subject, *output.lines]), None)
        if subject is None:
            return False
        stored = self.publisher.stored(subject, marker_id(schema, raw_id), schema.header)
        return await asyncio.wait_for(stored, PUBLISH_TIMEOUT)

    async def _publish_each(self, messages: list[Message]) -> Published:
        """Publish one by one, pipelined; the last message (the marker, see
        :meth:`_publish`) once the others are acknowledged. BEFORE when the stream held
        the last one already (an earlier attempt stored the output), else NEW."""
        parts = [messages[:-1], messages[-1:]] if self.markers else [messages]
        answers: list[bytes] = []
        for part in parts:
            if not part:
                continue
            acks = await self.publisher.publish_each(part)
            try:
                answers = await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_TIMEOUT)
            except BaseException:
                cancel_all(acks)
                raise
        return Published.BEFORE if answers and duplicate(answers[-1]) else Published.NEW

    async def use_atomic(self) -> bool:
        """Publish atomic batches when both output streams allow them (nats-server
        2.12+; an older server does not echo ``allow_atomic`` back)."""
        for stream in (subjects.STREAM_FLOWS, subjects.STREAM_DNS):
            info = await self.js.stream_info(stream)
            if not getattr(info.config, "allow_atomic", False):
                self.atomic_after = math.inf
                return False
        self.atomic_after = 0.0
        return True

    async def _reject(self, kind: str, msg: Msg, error: CodecError) -> None:
        """A raw message that cannot be decoded: log, dead-letter (counted once its copy
        is stored: :meth:`_dead`), terminate."""
        self.bad_log.warning(
            f"bad-{kind}-message",
            "raw message dead-lettered",
            subject=msg.subject,
            reason=error.reason,
            detail=error.detail[:200],
        )
        copy = messaging.dead_letter(
            self.nc, COMPONENT, msg.subject, msg.headers, msg.data, str(error),
            msg_id=f"enricher:dlq:{raw_message_id(msg.metadata)}",
        )  # fmt: skip
        if not await self._dead(copy, self.metrics.bad_messages.labels(error.reason), 1):
            await _settle(msg.nak(delay=1.0), "nak", self)
            return
        await _settle(msg.term(), "term", self)

    async def _dead_letter_records(
        self, kind: str, schema: codec.Schema, msg: Msg, bad: list[tuple[Any, RecordError]]
    ) -> bool:
        """The bad records of an otherwise good batch, dead-lettered as batches that fit
        the server's limit (a record re-encoded can be longer than it came: ``1e9``
        becomes ``1000000000.0``), one set of copies per distinct problem so that each
        copy's reason is true of every record in it, each stored once however often the
        raw batch comes back (its id: the raw message and the copy's place). Problems
        past the first ``PROBLEM_COPIES`` (those naming a value: 4 000 records with 4 000
        different bad addresses) share one more set, whose reason lists its problems,
        so that one raw batch never becomes thousands of copies. False if one was not
        stored: the raw batch is then redelivered. Counted by copy (:meth:`_dead`)."""
        first = bad[0][1]
        self.bad_log.warning(
            f"bad-{kind}-record", "raw records dead-lettered", subject=msg.subject,
            count=len(bad), reason=str(first),
        )  # fmt: skip
        lines = _encoded([record for record, _ in bad])
        limit = max(1024, self.nc.max_payload - PAYLOAD_HEADROOM)
        # a record alone too long for any message, or one orjson cannot write: the batch as it came
        if lines is None or max(map(len, lines)) > limit:
            errors = [error for _, error in bad]
            copies = [(dict(msg.headers or {}), msg.data, RecordError.summary(errors), len(bad))]
        else:
            copies = []
            for places in grouped([error.problem for _, error in bad]):
                start = 0
                for chunk in codec.chunk_lines(schema, [lines[i] for i in places], limit):
                    errors = [bad[i][1] for i in places[start : start + chunk.count]]
                    copies.append(
                        (chunk.headers, chunk.body, RecordError.summary(errors), chunk.count)
                    )
                    start += chunk.count
        raw_id = raw_message_id(msg.metadata)
        bad_records = self.metrics.bad_records.labels(kind)
        for n, (headers, body, reason, count) in enumerate(copies):
            copy = messaging.dead_letter(
                self.nc, COMPONENT, msg.subject, headers, body, reason,
                msg_id=f"enricher:dlq:{raw_id}:{n}",
            )  # fmt: skip
            if not await self._dead(copy, bad_records, count):
                return False
        return True

    async def _dead(self, copy: Awaitable[bool], bad: Counter, count: int) -> bool:
        """Await a dead-letter copy of ``count`` bad items through JetStream: True once
        stored, False if it was not. A copy stored anew counts in ``dead_lettered`` and
        its items in ``bad``; a redelivered message's copy is a duplicate, counted
        nowhere. So each bad item counts once, whichever delivery stored its copy —
        not on every delivery, nor only on the first, which may have failed before."""
        generation = self.streams.generation
        try:
            new = await asyncio.wait_for(copy, PUBLISH_TIMEOUT)
        except Exception as e:  # DLQ stream away, timeout, a refusal: redelivered later
            self.bad_log.warning("dlq", "dead-letter copy not stored", error=repr(e))
            await self._no_stream(subjects.STREAM_DLQ, e, generation)
            return False
        self._found(subjects.STREAM_DLQ)
        if new:
            self.metrics.dead_lettered.inc()
            bad.inc(count)
        return True

    # ------------------------------------------------------------ state

    def learn(self, msg: Msg) -> None:
        """Apply one socket or DNS message to this replica's join tables."""
        is_socket = msg.subject.startswith(subjects.RAW_SOCKETS + ".")
        schema = codec.RAW_SOCKET if is_socket else codec.RAW_DNS
        try:
            records = codec.decode(schema, msg.headers, msg.data)
        except CodecError:
            return  # counted and dead-lettered once, by the shared work consumer
        if is_socket:
            self.enricher.learn_sockets(records)
            self.metrics.records_in.labels("socket").inc(len(records))
        else:  # an answer's lifetime runs from when it was stored (a replay reads it late)
            age = datetime.datetime.now(datetime.UTC) - msg.metadata.timestamp
            self.enricher.learn_dns(records, age.total_seconds())


def _encoded(records: list[Any]) -> list[bytes] | None:
    """Bad records as NDJSON lines again, or None when orjson cannot write one: it reads
    lists and objects nested up to 1 024 deep but writes at most 254 levels, so a record
    read from a raw batch is not always one it can write."""
    try:
        return [orjson.dumps(record) + b"\n" for record in records]
    except orjson.JSONEncodeError:
        return None


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def raw_message_id(metadata: Msg.Metadata) -> str:
    """A raw message's own name: its stream sequence and the time it was stored (µs),
    the same on every delivery. The sequence alone restarts at 1 when the raw stream is
    deleted and made again, and a new batch would then take the ids of one stored in the
    enriched stream's duplicate window: refused as a duplicate, its marker found,
    nothing published — its records lost."""
    micros = (metadata.timestamp - EPOCH) // datetime.timedelta(microseconds=1)
    return f"{metadata.sequence.stream}@{micros}"


def msg_id_prefix(schema: codec.Schema, raw_id: str) -> str:
    """What every ``Nats-Msg-Id`` of a raw message's output starts with (subject and
    chunk number follow): the raw message's :func:`raw_message_id`, so that a
    redelivered raw message's output is the same ids and JetStream stores it once."""
    return f"enricher:{schema.name}:{raw_id}:"


def marker_id(schema: codec.Schema, raw_id: str) -> str:
    """The ``Nats-Msg-Id`` of a raw message's *marker* (see :meth:`Pipeline._publish`)."""
    return msg_id_prefix(schema, raw_id) + DONE


async def _settle(reply: Awaitable[None], what: str, pipeline: Pipeline) -> None:
    """Send an ack/nak/term; when NATS is away it is lost and the message comes back
    after ``ack_wait`` (its output is deduplicated by ``Nats-Msg-Id``)."""
    try:
        await reply
    except NatsError as e:
        pipeline.bad_log.warning(f"{what}-failed", f"{what} not sent", error=repr(e))


# ---------------------------------------------------------------- consumer set-up


async def work_subscription(
    js: JetStreamContext, work: Work, settings: ConsumerSettings
) -> JetStreamContext.PullSubscription:
    """Bind to the shared durable pull consumer for one kind, made or updated first.

    ``pull_subscribe`` alone binds to a durable that exists as it is: one made by an
    earlier deployment kept its ``ack_wait`` and ``max_ack_pending`` for ever (a longer
    merge window had every raw flow batch redelivered while held). The server creates
    the consumer or updates those; a durable of that name made otherwise, which it will
    not change (another deliver policy: err_code 10012, as a 500), is bound as it is,
    with a warning; ``pull_subscribe`` meets any other refusal again."""
    durable = f"{settings.durable}-{work.suffix}"
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_ack_pending=settings.max_ack_pending,
        filter_subject=work.subject,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        await js.add_consumer(subjects.STREAM_RAW, config)
    except (BadRequestError, ServerError) as e:
        log.warning(
            "work consumer not updated to the consumer settings; consuming it as it is",
            extra={"consumer": durable, "error": e.description},
        )
    return await js.pull_subscribe(
        work.subject, durable=durable, stream=subjects.STREAM_RAW, config=config
    )


class WorkConsumer:
    """One kind's shared durable pull consumer, made again when the server loses it.

    A nats-server restarted on an empty store has neither the raw stream nor the
    consumers; fetching then fails until this replica makes them again (the streams
    through ``make_streams``, idempotent, so several kinds or replicas may race)."""

    def __init__(
        self,
        js: JetStreamContext,
        work: Work,
        settings: ConsumerSettings,
        make_streams: Callable[[], Awaitable[None]],
        report: Callable[[str, bool], None],
    ) -> None:
        self._js = js
        self.work = work
        self._settings = settings
        self._make_streams = make_streams
        self._report = report  # (kind, subscribed)
        self.durable = f"{settings.durable}-{work.suffix}"
        self.sub: JetStreamContext.PullSubscription | None = None

    async def subscribe(self) -> None:
        old, self.sub = self.sub, await work_subscription(self._js, self.work, self._settings)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()

    async def gone(self) -> bool:
        """Whether the server says this consumer (or its stream) does not exist."""
        return await messaging.consumer_missing(
            self._js.consumer_info(subjects.STREAM_RAW, self.durable)
        )

    async def restore(self, stopping: asyncio.Event) -> None:
        """Make the streams and this consumer again, backing off up to 10 s between
        tries, until it is done or the service stops. Logged once each way."""
        kind = self.work.kind
        self._report(kind, False)
        log.warning("work consumer gone; making streams and consumer again", extra={"kind": kind})
        delay = 0.5
        while not stopping.is_set():
            try:
                await self._make_streams()
                await self.subscribe()
            except NatsError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
                continue
            log.info("work consumer subscribed again", extra={"kind": kind})
            self._report(kind, True)
            return


class StateFeeds:
    """This replica's ordered consumers of socket and DNS events, kept alive.

    nats-py rebuilds an ordered consumer itself after a gap or a reconnection, asking
    for ``BY_START_SEQUENCE`` from the last sequence it delivered but keeping the rest
    of the first request: a feed first opened ``BY_START_TIME`` is refused for good
    (err_code 10094, "optional start time is also set"). So each feed is opened by
    sequence — the first stored at or after ``lookback`` seconds ago, asked of the
    server — and :meth:`keep` reopens, from the last sequence learned, a feed whose
    consumer the server no longer has (a restart lost it, or nats-py could not rebuild
    it), or every feed from the start of a raw stream made anew (sequences restart).

    nats-py rebuilds from the last sequence *it* delivered on that subscription: none
    yet — a feed opened past events older than the lookback, NATS restarted before a
    new one came — and it asks for sequence 1, the whole stream again. Each
    subscription therefore skips messages below the sequence it was opened at (learning
    them would bring back stale sockets and names), and :meth:`keep` also reopens a feed
    whose consumer now starts below that sequence, rather than let it read through the
    stream (a day of it by default) only to skip it.

    Caught up means every feed has handed over its last pending message (or had none
    when it was subscribed). Both feeds count as behind until then — also the second
    while the first, subscribed and replaying already, reaches its end — and a feed
    whose last message came before its subscription's ``num_pending`` was read is not
    put behind again by that older figure."""

    SUBJECTS = (f"{subjects.RAW_SOCKETS}.>", f"{subjects.RAW_DNS}.>")

    def __init__(self, js: JetStreamContext, pipeline: Pipeline) -> None:
        self._js = js
        self._pipeline = pipeline
        self.caught_up = asyncio.Event()
        self._remaining = dict.fromkeys(self.SUBJECTS, True)
        self._ended: set[str] = set()
        self._subs: dict[str, JetStreamContext.PushSubscription] = {}
        self._next: dict[str, int] = {}  # per feed: the stream sequence to reopen at
        self._start: dict[str, int] = {}  # per feed: the sequence its subscription opened at
        self._stream_created: datetime.datetime | None = None

    async def start(self, lookback: float) -> None:
        """Subscribe both feeds from ``lookback`` seconds ago."""
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=lookback)
        self._stream_created = (await self._js.stream_info(subjects.STREAM_RAW)).created
        for subject in self.SUBJECTS:
            sub = await self._open(subject, await self._first_since(subject, since))
            info = await sub.consumer_info()
            # Behind while the server holds messages for it, or has sent some the callback
            # has not handed over yet: num_pending counts only those not sent, and the
            # whole backlog may be in this client's buffer when the answer comes back.
            sent = info.delivered.consumer_seq if info.delivered else 0
            behind = (info.num_pending or 0) > 0 or (sent or 0) > 0
            self._remaining[subject] = subject not in self._ended and behind
        if not any(self._remaining.values()):
            self.caught_up.set()

    async def keep(self) -> bool:
        """Reopen the feeds the server lost; True when both are subscribed again.

        False while the raw stream is missing or a feed cannot be reopened; a server
        that cannot answer (NATS away) leaves the feeds as they are: nats-py rebuilds
        them once reconnected, and the next call checks."""
        try:
            created = (await self._js.stream_info(subjects.STREAM_RAW)).created
        except NotFoundError:
            return False
        except NatsError:
            return True
        if created != self._stream_created:  # a new stream: everything in it is new
            self._stream_created = created
            self._next = dict.fromkeys(self.SUBJECTS, 1)
            lost = list(self.SUBJECTS)
        else:
            lost = [s for s in self.SUBJECTS if await self._lost(s)]
        for subject in lost:
            try:
                await self._open(subject, self._next[subject])
            except NatsError:
                return False
            log.warning("state feed subscribed again", extra={"subject": subject})
        return True

    async def _lost(self, subject: str) -> bool:
        """Whether the server no longer has the feed's consumer, or has it starting
        below the feed's subscription (rebuilt by nats-py from sequence 1: see the
        class's docstring). False when the server cannot tell (NATS away)."""
        start = self._start[subject]
        return await messaging.consumer_missing(
            self._subs[subject].consumer_info(),
            lambda found: (found.config.opt_start_seq or 0) < start,
        )

    async def close(self) -> None:
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _open(self, subject: str, start: int) -> JetStreamContext.PushSubscription:
        """An ordered consumer of ``subject`` from stream sequence ``start``, replacing
        the feed's previous one. No start time: see the class's docstring."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        sub = await self._js.subscribe(
            subject, stream=subjects.STREAM_RAW, cb=self._callback_for(subject, start),
            ordered_consumer=True, config=config,
        )  # fmt: skip
        old = self._subs.get(subject)
        self._subs[subject] = sub
        self._start[subject] = start
        self._next.setdefault(subject, start)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        return sub

    async def _first_since(self, subject: str, since: datetime.datetime) -> int:
        """The stream sequence to read ``subject`` from to get everything stored since
        then: the server's answer for a throwaway consumer starting at that time."""
        probe = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,  # type: ignore[arg-type]
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            inactive_threshold=5.0,
        )
        info = await self._js.add_consumer(subjects.STREAM_RAW, probe)
        with contextlib.suppress(NatsError):
            await self._js.delete_consumer(subjects.STREAM_RAW, info.name)
        return (info.delivered.stream_seq if info.delivered else 0) + 1

    def _callback_for(self, subject: str, start: int) -> Callable[[Msg], Awaitable[None]]:
        """The callback of a subscription opened at ``start``: what it gets from below
        ``start`` (a rebuild by nats-py from sequence 1) is not learned."""

        async def on_message(msg: Msg) -> None:
            sequence = msg.metadata.sequence.stream
            if sequence >= start:
                self._pipeline.learn(msg)
                self._next[subject] = sequence + 1
            if msg.metadata.num_pending == 0:
                self._ended.add(subject)
                self._remaining[subject] = False
                if not any(self._remaining.values()):
                    self.caught_up.set()

        return on_message


async def state_feed(js: JetStreamContext, pipeline: Pipeline, lookback: float) -> StateFeeds:
    """This replica's state feeds, subscribed from ``lookback`` seconds ago."""
    feeds = StateFeeds(js, pipeline)
    await feeds.start(lookback)
    return feeds


# ---------------------------------------------------------------- loops


async def work_loop(
    consumer: WorkConsumer,
    kind: str,
    pipeline: Pipeline,
    settings: ConsumerSettings,
    hold: float,
    stopping: asyncio.Event,
) -> None:
    """Fetch raw messages and handle each ``hold`` seconds after it arrived.

    Fetching and handling run concurrently through a bounded queue: the hold delays
    each message, not the throughput. On stop, fetching ends and what was fetched is
    finished (anything left unacked is redelivered after ``ack_wait``).
    """
    queue: asyncio.Queue[tuple[float, Msg] | None] = asyncio.Queue(maxsize=settings.batch * 2)
    await asyncio.gather(
        _fetch_work(consumer, pipeline, settings, hold, queue, stopping),
        _handle_work(queue, kind, pipeline),
    )


async def _fetch_work(
    consumer: WorkConsumer,
    pipeline: Pipeline,
    settings: ConsumerSettings,
    hold: float,
    queue: asyncio.Queue[tuple[float, Msg] | None],
    stopping: asyncio.Event,
) -> None:
    """:func:`work_loop`'s fetching: each message into ``queue`` with the time it is due
    (``hold`` seconds after it arrived), until stopping; then None, the end."""
    checked = time.monotonic()
    while not stopping.is_set():
        assert consumer.sub is not None
        try:
            msgs = await consumer.sub.fetch(settings.batch, timeout=0.5)
        except (NatsTimeoutError, TimeoutError):
            # An idle consumer and a lost one look alike: ask now and then.
            if time.monotonic() - checked > LOST_CHECK and await consumer.gone():
                await consumer.restore(stopping)
            checked = time.monotonic()
            continue
        except NatsError as e:
            await _fetch_failed(consumer, pipeline, e, stopping)
            continue
        due = time.monotonic() + hold
        for msg in msgs:
            await queue.put((due, msg))
    await queue.put(None)


async def _fetch_failed(
    consumer: WorkConsumer, pipeline: Pipeline, error: NatsError, stopping: asyncio.Event
) -> None:
    """After a fetch failed with ``error``: the consumer made again if the server lost
    it; else logged, and a pause before the next fetch."""
    if await consumer.gone():
        await consumer.restore(stopping)
        return
    # disconnected: the client reconnects by itself
    pipeline.bad_log.warning("fetch", "fetching raw messages failed", error=repr(error))
    await asyncio.sleep(0.5)


async def _handle_work(
    queue: asyncio.Queue[tuple[float, Msg] | None], kind: str, pipeline: Pipeline
) -> None:
    """:func:`work_loop`'s handling: each queued message once it is due, until the end
    (None); then waits for those still being handled. Raw flow batches that are due
    together — a backlog, a burst, a replica catching up — go to
    :meth:`Pipeline.handle_flows` as one group (:func:`_group`)."""
    # Enriching is synchronous, so batches are enriched in arrival order; up to
    # HANDLERS of them (or of their groups) wait for their publish acknowledgements at
    # the same time.
    slots = asyncio.Semaphore(HANDLERS)
    running: set[asyncio.Task[None]] = set()
    ahead: Any = _NOTHING  # a queue item _group took but left for the next turn
    while True:
        item, ahead = await queue.get() if ahead is _NOTHING else ahead, _NOTHING
        if item is None:
            break
        due, msg = item
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        for task in [t for t in running if t.done()]:
            running.discard(task)
            task.result()  # a bug in handling crashes the service loudly
        group = [msg]
        if kind == "flow":
            ahead = _group(group, queue)
        work = pipeline.handle(kind, msg) if len(group) == 1 else pipeline.handle_flows(group)
        task = asyncio.create_task(work)
        task.add_done_callback(lambda _: slots.release())
        running.add(task)
    await asyncio.gather(*running)


_NOTHING: Any = object()  # _group took no queue item it did not add


def _group(group: list[Msg], queue: asyncio.Queue[tuple[float, Msg] | None]) -> Any:
    """Add to ``group`` (one raw flow batch, due) the queued batches due now, in order,
    up to :data:`GROUP_MAX` batches of :data:`GROUP_RECORDS` records in all (by their
    ``Flowscope-Count``; a batch without one goes alone). Returns the queue item it
    took but left out, to be handled next — a batch not due yet or one too many, or
    None, the queue's end — or ``_NOTHING``."""
    records = _records(group[0])
    while len(group) < GROUP_MAX and not queue.empty():
        item = queue.get_nowait()
        if item is None:
            return item
        count = _records(item[1])
        if item[0] > time.monotonic() or records + count > GROUP_RECORDS:
            return item
        group.append(item[1])
        records += count
    return _NOTHING


def _records(msg: Msg) -> int:
    """A raw batch's record count as its header gives it; :data:`GROUP_RECORDS` when it
    gives none (that batch goes alone)."""
    count = codec.stated_count(msg.headers)
    return GROUP_RECORDS if count is None else count


async def feed_loop(
    feeds: StateFeeds,
    report: Callable[[bool], None],
    stopping: asyncio.Event,
    interval: float = FEED_CHECK,
) -> None:
    """Keep the state feeds subscribed (:meth:`StateFeeds.keep`); report each change:
    while a feed is lost, socket and DNS events are not learned and new flows lose
    their process and names."""
    alive = True
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
        if stopping.is_set():
            return
        now = await feeds.keep()
        if now != alive:
            log.log(logging.INFO if now else logging.WARNING,
                    "state feeds subscribed" if now else "state feeds lost; subscribing again")  # fmt: skip
            report(now)
        alive = now


async def upkeep_loop(
    pipeline: Pipeline,
    durables: dict[str, str],
    sweep: Callable[[], None],
    stopping: asyncio.Event,
    interval: float = 5.0,
) -> None:
    """Periodic chores: consumer lag, expiring joins and deleted objects, gauges."""
    metrics = pipeline.metrics
    while not stopping.is_set():
        for kind, durable in durables.items():
            try:
                info = await pipeline.js.consumer_info(subjects.STREAM_RAW, durable)
            except Exception:  # NATS briefly away: lag is reported next time
                continue
            metrics.consumer_pending.labels(kind).set(info.num_pending or 0)
        sweep()
        enricher = pipeline.enricher
        enricher.sockets.expire()
        enricher.observers.expire()
        metrics.sockets.set(len(enricher.sockets))
        metrics.names.set(len(enricher.names))
        metrics.observers.set(len(enricher.observers))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
