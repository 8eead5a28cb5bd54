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
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from flowscope.core.errors import FlowscopeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class PublishError(FlowscopeError):
    """JetStream did not store a message (no stream, or the stream refused it)."""

    def __init__(self, subject: str, problem: str) -> None:
        self.subject = subject
        self.problem = problem
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
            future.set_exception(PublishError(subject, problem))
        else:
            future.set_result(msg.data)


def cancel_all(futures: list[asyncio.Future[Any]]) -> None:
    """Give up on acks still outstanding (their messages will be published again)."""
    for future in futures:
        if not future.done():
            future.cancel()
