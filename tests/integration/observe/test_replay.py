"""The replay's building block against a real JetStream: a range of stream sequences."""

from __future__ import annotations

import contextlib
from typing import Any

from flowscope import observe
from flowscope.core import messaging, subjects


async def test_a_range_is_read_completely_every_time(nc: Any) -> None:
    """Regression: the server may push the whole range before the consumer's info is
    read (then num_pending is 0); the range must still be read, every time."""
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(subjects.STREAM_FLOWS)
    await messaging.ensure_streams(js, messaging.NatsSettings())
    for i in range(120):
        await js.publish(subjects.flows("a", "b" if i % 2 else "c"), str(i).encode())
    for _ in range(15):
        got = [
            m.metadata.sequence.stream
            async for m in observe.messages_in_range(js, subjects.FLOWS_ALL, 50, 100)
        ]
        assert got == list(range(50, 101))
    narrowed = [
        m.data async for m in observe.messages_in_range(js, subjects.flows("a", "b"), 1, 10)
    ]
    assert narrowed == [b"1", b"3", b"5", b"7", b"9"]
    empty = [m async for m in observe.messages_in_range(js, subjects.flows("x", "y"), 1, 120)]
    assert empty == []
