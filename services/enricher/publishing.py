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
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import orjson
from flowscope.core.errors import FlowscopeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

ATOMIC_MAX = 1000  # messages per atomic batch: the server's limit (ADR-50)
ATOMIC_DISABLED = 10174  # JetStream err_code: the stream does not allow atomic batches
ATOMIC_DUPLICATE = 10201  # err_code: a message id of the batch is already stored
BATCH_ID, BATCH_SEQUENCE, BATCH_COMMIT = "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"

Message = tuple[str, bytes, dict[str, str]]  # subject, body, headers


class PublishError(FlowscopeError):
    """JetStream did not store a message (no stream, or the stream refused it).

    ``code`` is JetStream's ``err_code`` when the stream answered with one, else 0.
    """

    def __init__(self, subject: str, problem: str, code: int = 0) -> None:
        self.subject = subject
        self.problem = problem
        self.code = code
        super().__init__(f"publish to {subject} failed: {problem}")


class AckedPublisher:
    """Publishes to JetStream; :meth:`publish` returns a future of the stream's ack."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._pending: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        self._tokens = itertools.count()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for _, future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def publish(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[bytes]:
        """Send one message; the future resolves to the PubAck body, or fails."""
        token = str(next(self._tokens))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._pending.pop(token, None))
        self._pending[token] = (subject, future)
        await self._nc.publish(subject, body, reply=f"{self._prefix}.{token}", headers=headers)
        return future

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
        for n, (subject, body, headers) in enumerate(messages, 1):
            marked = {**headers, BATCH_ID: batch_id, BATCH_SEQUENCE: str(n)}
            if n == last:
                marked[BATCH_COMMIT] = "1"
                return await self.publish(subject, body, marked)
            await self._nc.publish(subject, body, headers=marked)
        raise AssertionError("unreachable: the last message returns")

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._pending.get(msg.subject[len(self._prefix) + 1 :])
        if entry is None or entry[1].done():
            return  # answered after the caller gave up (timeout)
        subject, future = entry
        status = (msg.headers or {}).get("Status")
        if status == "503":
            future.set_exception(PublishError(subject, "no stream captures the subject"))
        elif status is not None or b'"error"' in msg.data:
            problem = msg.data.decode(errors="replace")[:200] or f"status {status}"
            future.set_exception(PublishError(subject, problem, _error_code(msg.data)))
        else:
            future.set_result(msg.data)


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
