"""Exponential backoff with jitter, interruptible by shutdown.

Both remote sinks retry transient failures the way the OTLP specification asks:
exponential backoff with jitter (each delay drawn from the upper half of its step,
[d/2, d], so a retry never comes sooner than half the step), unless the server names a delay (gRPC RetryInfo,
HTTP Retry-After), which is honoured instead — but never shorter than the first step:
a receiver answering "retry after 0 s" (or an HTTP date already past) for as long as
it is overloaded was sent thousands of requests a second. A hint of 0 names no pace at
all, so the backoff's own delay is used. Waiting ends early when the sink shuts down,
so a drain never sits out a long backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

# A server asking for a longer pause than this is more likely confused than right.
SERVER_HINT_LIMIT = 300.0
# Doublings counted at most: 2**64 times any sane initial delay is past any maximum,
# and an unbounded exponent overflows a float after 1,023 retries (hours of outage).
MAX_DOUBLINGS = 64


@dataclass(slots=True)
class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each jittered into [d/2, d]."""

    initial: float
    maximum: float
    attempt: int = 0

    def next_delay(self, server_hint: float | None = None) -> float:
        """The delay before the next attempt; a server's hint above 0 wins (at least
        ``initial``, up to 5 minutes)."""
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.attempt, MAX_DOUBLINGS))
        self.attempt += 1
        if server_hint is not None and server_hint > 0:
            return max(min(server_hint, SERVER_HINT_LIMIT), self.initial)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from ``initial`` (the last attempt worked)."""
        self.attempt = 0


@dataclass(slots=True)
class Stopper:
    """A shutdown flag that retry waits can be interrupted by."""

    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    def stop(self) -> None:
        self.event.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if shutdown began meanwhile (stop retrying)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        return not self.event.is_set()
