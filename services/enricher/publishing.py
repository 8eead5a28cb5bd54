"""JetStream publishing with pipelined acknowledgements.

A JetStream publish is a core NATS publish with a reply subject; the stream answers on
it with a PubAck (``{"stream": ..., "seq": ...}``) or an error
(``{"error": {...}}``), and a 503 status message means no stream captures the subject.
This publisher sends every message with a reply subject under one inbox it subscribed
to once, and resolves one future per message when its answer arrives — so a batch of
messages costs one round trip, not one each.

nats-py's ``publish_async`` does the same, but guards each call with
``asyncio.wait_for`` on a semaphore; measured on the development machine that doubles
the cost per message (≈ 44 µs against ≈ 20 µs), and a raw flow batch fans out to
hundreds of messages (one per source/destination namespace pair).

:meth:`AckedPublisher.publish_atomic` sends a group of messages as one JetStream
*atomic batch* (nats-server 2.12+, ADR-50; the stream needs ``allow_atomic``): headers
``Nats-Batch-Id`` / ``Nats-Batch-Sequence`` on every message, ``Nats-Batch-Commit: 1``
on the last, and only that last one carries a reply subject — the stream stores all of
them or none and acknowledges once. Measured on the development machine with 320
messages of 3.4 KB: 7.5 µs of client CPU per message against 14 to 16.5 µs with one ack
each.

The messages of an atomic batch, and those of one raw batch published with one ack
each (:meth:`AckedPublisher.publish_each`), are encoded here all at once
(:func:`encode`) and handed to nats-py as one write (:meth:`AckedPublisher._write`):
nats-py's ``publish`` checks and encodes each message's headers in Python and queues
each message with its own awaits, most of its cost per message. The bytes are those
``publish`` writes (tested against a real nats-server: relayed frames and stored
header blocks). nats-py has no public call for a pre-encoded write, so
:meth:`AckedPublisher._write` uses its internals (its transport and pending list; see
there), and the messages go through ``publish`` instead when those are missing, the
connection is not up, or a message is one ``publish`` would refuse or change. With
bench/enricher_publish.py (320 messages of 3.4 KB, client CPU per message): an atomic
batch 12.1 → 3.7 µs, one ack each 14.2 → 11.1 µs. Over TCP the write goes to the
socket's transport at once rather than through nats-py's pending list and flusher,
which copied a raw batch's ~1.1 MB output (with other batches') once more onto fresh
pages (docs/performance-history.md).

A raw batch's lines as the compiled core rendered them (``_flowcore.Lines``) are not
even joined: :func:`gather_lines` frames them as a ``_flowcore.Frame`` — the messages'
heads in a buffer of their own, the lines where they are — which ``sendmsg`` sends
straight from there when the socket's transport has nothing buffered; only what a full
socket does not take is copied, for the transport to buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from flowscope.core.codec import COUNT_HEADER, SCHEMA_HEADER
from flowscope.core.errors import FlowscopeError
from flowscope.core.messaging import HEADER_NAME, MSG_ID_HEADER
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport

try:  # the compiled core frames a raw batch's flow lines (flowcore.c, frame_atomic)
    from flowscope.enricher import _flowcore
except ImportError:  # pragma: no cover - a build without a C compiler
    _flowcore = None  # type: ignore[assignment]

# asyncio's transport of a plain socket (a TLS connection has another, over it)
_SOCKET_TRANSPORT: type[asyncio.Transport] | None = getattr(
    asyncio.selector_events, "_SelectorSocketTransport", None
)
ATOMIC_MAX = 1000  # messages per atomic batch: the server's limit (ADR-50)
ATOMIC_DISABLED = 10174  # JetStream err_code: the stream does not allow atomic batches
ATOMIC_DUPLICATE = 10201  # err_code: a message id of the batch is already stored
WRONG_LAST_MSG_ID = 10070  # err_code: Nats-Expected-Last-Msg-Id did not match
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
NO_SUCH_ID = "flowscope:no-such-message"  # never a message's id (see AckedPublisher.stored)
BATCH_ID, BATCH_SEQUENCE, BATCH_COMMIT = "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"
BATCH_HEADERS = frozenset((BATCH_ID, BATCH_SEQUENCE, BATCH_COMMIT))

Message = tuple[str, bytes, dict[str, str]]  # subject, body, headers
CRLF = b"\r\n"


class PublishError(FlowscopeError):
    """JetStream did not store a message (no stream, or the stream refused it).

    ``code`` is JetStream's ``err_code`` when the stream answered with one, else 0;
    ``unexpected``: the stream did something flowscope relies on it not doing.
    """

    def __init__(self, subject: str, problem: str, code: int = 0, unexpected: bool = False) -> None:
        self.subject = subject
        self.problem = problem
        self.code = code
        self.unexpected = unexpected
        super().__init__(f"publish to {subject} failed: {problem}")


class NoStreamError(PublishError):
    """No stream captures the subject (the server's 503 "no responders"): deleted, or
    lost with the server's store. Nothing else is wrong with the message."""

    def __init__(self, subject: str) -> None:
        super().__init__(subject, "no stream captures the subject")


class AckedPublisher:
    """Publishes to JetStream; :meth:`publish` returns a future of the stream's ack."""

    def __init__(self, nc: NATS, encode: bool = True) -> None:
        """``encode``: write messages encoded here (see the module docstring) when the
        client allows it; False: always through nats-py's ``publish`` (tests compare)."""
        self._nc = nc
        self._writes = encode and _writable(nc)
        self._prefix = ""
        self._pending: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        self._tokens = itertools.count()
        self._sub: Subscription | None = None
        # encoded writes waiting for _flush_outgoing
        self._outgoing: list[memoryview | _flowcore.Frame] = []

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None and not self._nc.is_closed:  # closed: nothing to undo
            await self._sub.unsubscribe()
        for _, future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[bytes]:
        """Send one message; the future resolves to the PubAck body, or fails."""
        reply, future = self._expect(subject)
        await self._nc.publish(subject, body, reply=reply, headers=headers)
        return future

    async def stored(self, subject: str, msg_id: str, schema: str) -> bool:
        """Whether the stream capturing ``subject`` holds a message ``msg_id`` (within its
        duplicate window), asked without storing anything.

        JetStream has no look-up by message id. The question is an empty message with
        that id and ``Nats-Expected-Last-Msg-Id`` set to an id no message has: the stream
        checks for a duplicate id before that expectation, so it answers a PubAck marked
        ``duplicate`` when the id is stored and refuses the message (err_code 10070)
        when it is not (tests/integration/enricher/test_publishing.py pins this against
        nats-server). Any other answer raises :class:`PublishError` — one that stored the
        empty message with ``unexpected`` set, for the caller to stop asking.

        Core NATS subscribers of ``subject`` receive the question all the same (the
        stream refusing it does not stop its delivery): it carries ``schema`` (the
        ``Flowscope-Schema`` value of what is published there) and a count of 0, so that
        it decodes as a batch of no records.
        """
        headers = {
            MSG_ID_HEADER: msg_id, EXPECTED_LAST_MSG_ID: NO_SUCH_ID,
            SCHEMA_HEADER: schema, COUNT_HEADER: "0",
        }  # fmt: skip
        try:
            answer = await (await self.publish(subject, b"", headers))
        except PublishError as e:
            if e.code == WRONG_LAST_MSG_ID:
                return False
            raise
        if duplicate(answer):
            return True
        raise PublishError(subject, f"the stream stored the question for {msg_id}", unexpected=True)

    async def publish_each(self, messages: Sequence[Message]) -> list[asyncio.Future[bytes]]:
        """:meth:`publish` every message (one ack each), encoded and written at once
        when the client allows it (see the module docstring)."""
        if self._writes and messages:
            expected = [self._expect(subject) for subject, _, _ in messages]
            data = encode(messages, [reply for reply, _ in expected], None, self._nc.max_payload)
            futures = [future for _, future in expected]
            if await self._send(messages, data, futures):
                return futures
        futures = []
        try:
            for subject, body, headers in messages:
                futures.append(await self.publish(subject, body, headers))
        except BaseException:
            cancel_all(futures)
            raise
        return futures

    async def publish_atomic(self, messages: Sequence[Message]) -> asyncio.Future[bytes]:
        """Send up to :data:`ATOMIC_MAX` messages (one stream) as one atomic batch.

        The future resolves to the commit's PubAck, or fails with :class:`PublishError`
        (``code`` :data:`ATOMIC_DISABLED`, :data:`ATOMIC_DUPLICATE`, …) and then
        nothing of the batch was stored.
        """
        if not 0 < len(messages) <= ATOMIC_MAX:
            raise ValueError(f"an atomic batch holds 1 to {ATOMIC_MAX} messages")
        batch_id = uuid.uuid4().hex  # fresh per attempt: a retried batch is a new batch
        last = len(messages)
        if self._writes:
            reply, future = self._expect(messages[-1][0])
            replies = [""] * (last - 1) + [reply]  # only the commit is acknowledged
            data = encode(messages, replies, batch_id, self._nc.max_payload)
            if await self._send(messages, data, [future]):
                return future
        for n, (subject, body, headers) in enumerate(messages, 1):
            marked = {**headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(n)}
            if n == last:
                marked[BATCH_COMMIT] = "1"
                return await self.publish(subject, body, marked)
            await self._nc.publish(subject, body, headers=marked)
        raise AssertionError("unreachable: the last message returns")

    async def publish_lines_atomic(
        self, lines: dict[str, list[bytes]] | _flowcore.Lines, schema: str, msg_id: str,
        last_id: str | tuple[str, ...] | None, max_body: int,
    ) -> asyncio.Future[bytes] | None:  # fmt: skip
        """A raw batch's flow lines (subject → NDJSON lines, or the compiled core's
        ``Lines``) as one atomic batch, one message per subject with the headers
        ``Pipeline._messages`` gives them (``Nats-Msg-Id``: ``msg_id`` + subject +
        ``:0``, the last one's ``msg_id`` + ``last_id`` unless that is None), framed by
        the enricher's compiled core: the bytes :meth:`publish_atomic` writes for those
        messages. ``last_id`` a tuple of k ids (the markers of k raw batches published
        together): the last k messages' ids are those, in full. None, nothing sent, when
        that does not apply — no compiled core, encoding off, more than
        :data:`ATOMIC_MAX` subjects (or fewer than k), a header value ``publish`` would
        change, a subject or size the core leaves to Python — and the caller builds the
        messages."""
        if _flowcore is None or not self._writes or not 0 < len(lines) <= ATOMIC_MAX:
            return None
        last = next(reversed(lines)) if isinstance(lines, dict) else lines.subjects[-1]
        if last_id is None:
            last_id = f"{last}:0"
        ids = last_id if isinstance(last_id, tuple) else (msg_id + last_id,)
        if not all(map(_value_as_given, (schema, msg_id, *ids))):
            return None
        reply, future = self._expect(last)
        texts = (schema, msg_id, last_id, uuid.uuid4().hex, reply,
                 min(max_body, self._nc.max_payload))  # fmt: skip
        framed: tuple[bytes | _flowcore.Frame, int, int] | None
        if isinstance(lines, dict):
            framed = frame_lines(lines, *texts)
        else:
            framed = gather_lines(lines, *texts)
        try:
            if framed is not None and await self._write(*framed):
                return future
        except BaseException:
            future.cancel()
            raise
        future.cancel()
        return None

    async def _send(
        self, messages: Sequence[Message], data: bytes | None, futures: list[asyncio.Future[bytes]]
    ) -> bool:
        """Write encoded messages whose acks ``futures`` await; False, the futures
        cancelled, when they are to go through ``publish`` instead (``data`` None: the
        encoder left them to it; or the connection is not up)."""
        try:
            if data is not None:
                body_bytes = sum(len(body) for _, body, _ in messages)
                if await self._write(data, len(messages), body_bytes):
                    return True
        except BaseException:
            cancel_all(futures)
            raise
        cancel_all(futures)
        return False

    async def _write(self, data: bytes | _flowcore.Frame, count: int, body_bytes: int) -> bool:
        """Write encoded commands to nats-py's connection; False, with nothing sent, when
        the connection is not up (reconnecting, draining, closed): ``publish`` buffers
        or refuses then, and the caller falls back to it.

        Over TCP (and TLS) the bytes go to the socket's transport from here
        (:meth:`_flush_outgoing`), after whatever nats-py has pending, once the
        transport is under its high-water mark, as nats-py's flusher writes. Queued on
        nats-py's pending list instead, a raw batch's ~1.1 MB output waited there for
        the flusher, which joins every pending command into one new buffer — the
        outputs of several raw batches, several MB, copied once more, onto freshly
        mapped pages — and asyncio copies what a partial ``send`` leaves of a ``bytes``
        object twice more (a slice, then its buffer); of a ``memoryview``, once. The
        writes of one turn of the event loop go out together, at its end, as the
        flusher grouped them: written one by one as each batch was framed, the
        enrichment between them measured slower by about what the copies saved
        (docs/performance-history.md).

        nats-py internals (2.x, checked by :func:`_writable` at start): ``_transport``,
        its pending list ``_pending`` / ``_pending_data_size`` (what ``_flusher`` writes
        and resets); for another transport (WebSocket) ``_send_command`` appends to the
        pending list and, while the flush queue is empty, ``_flush_pending`` wakes the
        flusher — how ``publish`` ends.
        """
        nc = self._nc
        if not nc.is_connected or nc.is_draining:
            return False
        nc.stats["out_msgs"] += count
        nc.stats["out_bytes"] += body_bytes
        transport = nc._transport
        if isinstance(transport, TcpTransport):
            await transport.drain()
            self._outgoing.append(data if isinstance(data, _flowcore.Frame) else memoryview(data))
            if len(self._outgoing) == 1:
                asyncio.get_running_loop().call_soon(self._flush_outgoing, transport)
            return True
        if not isinstance(data, bytes):
            data = data.rest()
        await nc._send_command(data)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
        return True

    def _flush_outgoing(self, transport: TcpTransport) -> None:
        """Write what :meth:`_write` queued (and, first, what nats-py has pending) to
        the transport it was queued for; gone with it when the connection was lost
        meanwhile (its acks then time out and the raw batch is published again)."""
        outgoing, self._outgoing = self._outgoing, []
        nc = self._nc
        if nc._transport is not transport or not nc.is_connected:
            return
        if nc._pending:
            transport.writelines(nc._pending)
            nc._pending = []
            nc._pending_data_size = 0
        for data in outgoing:
            if isinstance(data, memoryview):
                transport.write(data)
                continue
            _send_frame(transport, data)
            if len(data):
                transport.write(data.rest())

    def _expect(self, subject: str) -> tuple[str, asyncio.Future[bytes]]:
        """A reply subject under the inbox and the future its answer resolves."""
        token = str(next(self._tokens))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._pending.pop(token, None))
        self._pending[token] = (subject, future)
        return f"{self._prefix}.{token}", future

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._pending.get(msg.subject[len(self._prefix) + 1 :])
        if entry is None or entry[1].done():
            return  # answered after the caller gave up (timeout)
        subject, future = entry
        status = (msg.headers or {}).get("Status")
        if status == "503":
            future.set_exception(NoStreamError(subject))
        elif status is not None or b'"error"' in msg.data:
            problem = msg.data.decode(errors="replace")[:200] or f"status {status}"
            future.set_exception(PublishError(subject, problem, _error_code(msg.data)))
        else:
            future.set_result(msg.data)


def gather_lines(
    lines: _flowcore.Lines, schema: str, msg_id: str, last_id: str | tuple[str, ...],
    batch_id: str, reply: str, max_body: int,
) -> tuple[_flowcore.Frame, int, int] | None:  # fmt: skip
    """:func:`frame_lines` of the compiled core's ``Lines``, the bytes gathered where
    they are rather than joined: (frame, messages, body bytes); ``frame.rest()`` gives
    the bytes :func:`frame_lines` does."""
    if _flowcore is None:
        return None
    texts = _frame_texts(schema, msg_id, last_id, batch_id)
    return _flowcore.gather_atomic(lines, *texts, reply, max_body)


def merge_lines(parts: list[_flowcore.Lines]) -> _flowcore.Lines:
    """Several raw batches' rendered lines as one ``Lines``, part after part, to go out
    as one atomic batch (flowcore.c, ``merge_lines``): only the compiled core renders
    ``Lines``, so it is there when they are."""
    return _flowcore.merge_lines(parts)


def _frame_texts(
    schema: str, msg_id: str, last_id: str | tuple[str, ...], batch_id: str
) -> tuple[bytes, bytes, bytes, bytes, bytes | tuple[bytes, ...]]:
    """The header text around a message's count, subject and sequence, the commit, and
    the end of the commit's message id (or the last messages' whole ids)."""
    return (
        f"{SCHEMA_HEADER}: {schema}\r\n{COUNT_HEADER}: ".encode(),
        f"\r\n{MSG_ID_HEADER}: {msg_id}".encode(),
        f"\r\n{BATCH_ID}: {batch_id}\r\n{BATCH_SEQUENCE}: ".encode(),
        f"{BATCH_COMMIT}: 1\r\n".encode(),
        tuple(i.encode() for i in last_id) if isinstance(last_id, tuple) else last_id.encode(),
    )


def frame_lines(
    lines: dict[str, list[bytes]] | _flowcore.Lines, schema: str, msg_id: str,
    last_id: str | tuple[str, ...], batch_id: str, reply: str, max_body: int,
) -> tuple[bytes, int, int] | None:  # fmt: skip
    """(data, messages, body bytes) of ``lines`` as one atomic batch — one message per
    subject, headers schema, count, ``Nats-Msg-Id`` ``msg_id`` + subject + ``:0`` (the
    last one's ``msg_id`` + ``last_id``), the commit's reply ``reply`` — byte for byte
    :func:`encode` of those messages; framed by the compiled core, None when it leaves
    them to Python (see flowcore.c)."""
    if _flowcore is None:
        return None
    texts = _frame_texts(schema, msg_id, last_id, batch_id)
    return _flowcore.frame_atomic(lines, *texts, reply, max_body)


def encode(
    messages: Sequence[Message], replies: Sequence[str], batch_id: str | None, max_payload: int
) -> bytes | None:
    """The HPUB commands nats-py's ``publish`` writes for ``messages``, byte for byte:
    each with its reply subject (``""``: none) and, with a ``batch_id``, the headers of
    an atomic batch added as :meth:`AckedPublisher.publish_atomic` adds them.

    None when a message is not one ``publish`` would send as given — a subject with
    white space, a header key that is not a token, a header value with a line break,
    another control character or surrounding white space (nats-py rejects the first
    two and changes the value), a body over ``max_payload`` — so that ``publish``
    deals with it as it always did.
    """
    out: list[bytes] = []
    keys: set[str] = set()
    marks = f"{BATCH_ID}: {batch_id}\r\n{BATCH_SEQUENCE}: "
    last = len(messages)
    if len(replies) != last:
        raise ValueError("one reply subject per message")
    subjects_seen: set[str] = set()  # a raw batch's messages share few subjects
    for n, (subject, body, headers) in enumerate(messages, 1):
        if subject not in subjects_seen:
            if not _subject_as_given(subject):
                return None
            subjects_seen.add(subject)
        if len(body) > max_payload:
            return None
        own = ""
        for key, value in headers.items():  # isprintable: no CR, LF, tab, NEL, NBSP, …
            if not _value_as_given(value):
                return None
            keys.add(key)
            own += f"{key}: {value}\r\n"
        reply = replies[n - 1]
        if batch_id is None:
            head = f"NATS/1.0\r\n{own}\r\n".encode()
        else:
            commit = f"{BATCH_COMMIT}: 1\r\n" if n == last else ""
            head = f"NATS/1.0\r\n{own}{marks}{n}\r\n{commit}\r\n".encode()
        size = len(head)
        out += f"HPUB {subject} {reply} {size} {size + len(body)}\r\n".encode(), head, body, CRLF
    if not all(map(HEADER_NAME.fullmatch, keys)):
        return None
    if batch_id is not None and not keys.isdisjoint(BATCH_HEADERS):
        return None  # (publish_atomic's dict merge would put ours in their place)
    return b"".join(out)


def _value_as_given(value: str) -> bool:
    """Whether nats-py's ``publish`` sends this header value unchanged."""
    return value.isprintable() and value.strip(" ") == value


def _subject_as_given(subject: str) -> bool:
    """Whether nats-py's ``publish`` sends this subject unchanged (see :func:`encode`;
    the headers' values and the body's size are checked there)."""
    return bool(subject) and subject.isprintable() and " " not in subject


def _send_frame(transport: TcpTransport, frame: _flowcore.Frame) -> None:
    """Send what ``frame`` holds straight to the connection's socket, as much as it
    takes now, when that is where the transport would write it next: a plain TCP
    socket (not TLS) with nothing buffered ahead. asyncio's transport keeps no count
    of its own that this write bypasses; what is left, the caller writes to it.

    An error leaves the frame's rest to the transport, whose own write meets the
    error and closes the connection as it always does (the raw batch's ack times out
    and it is enriched again)."""
    writer = getattr(transport, "_io_writer", None)
    sock_transport = getattr(writer, "transport", None)
    if (
        _SOCKET_TRANSPORT is None
        or not isinstance(sock_transport, _SOCKET_TRANSPORT)
        or sock_transport.is_closing()
        or sock_transport.get_write_buffer_size()
    ):
        return
    sock = sock_transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        frame.send(sock.fileno())


def _writable(nc: NATS) -> bool:
    """Whether this nats-py client has the internals :meth:`AckedPublisher._write` uses."""
    return all(
        callable(getattr(nc, name, None)) for name in ("_send_command", "_flush_pending")
    ) and all(
        hasattr(nc, name)
        for name in ("_flush_queue", "_transport", "_pending", "_pending_data_size")
    )


def duplicate(ack: bytes) -> bool:
    """Whether a PubAck says the stream held the message's ``Nats-Msg-Id`` already and
    stored nothing. (An atomic batch holding a stored id is refused instead:
    :data:`ATOMIC_DUPLICATE`.)"""
    return orjson.loads(ack).get("duplicate") is True


def _error_code(body: bytes) -> int:
    """JetStream's ``err_code`` in an error answer, 0 when there is none."""
    try:
        code = orjson.loads(body)["error"]["err_code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 0
    return code if type(code) is int else 0


def cancel_all(futures: list[asyncio.Future[Any]]) -> None:
    """Give up on acks still outstanding (their messages will be published again)."""
    for future in futures:
        if not future.done():
            future.cancel()
