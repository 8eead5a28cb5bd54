"""An output stream or the dead-letter stream deleted under a running enricher (``nats
stream rm``, a JetStream cluster that lost it): before, nothing made it again while the
enricher ran — every raw batch was nak'ed and redelivered for ever while /readyz said
ready, until a restart's ensure_streams. Now the streams are made again, as at start-up,
/readyz says why nothing is published meanwhile, and the raw batch waiting is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from flowscope.core import codec, subjects
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.integration.enricher.conftest import (
    Replica,
    make_settings,
    publish_raw,
    raw_flow,
    start_replica,
)
from tests.support import nats_server
from tests.support.waiting import eventually


@pytest.fixture
async def running() -> AsyncIterator[tuple[Replica, NATS]]:
    """A ready enricher and a client, on a server of their own."""
    server = nats_server.start()
    replica = start_replica(make_settings(server.url))
    nc = await nats.connect(server.url)
    try:
        await replica.ready()
        yield replica, nc
    finally:
        assert await replica.stop() == 0
        await nc.close()
        server.close()


class Unready:
    """Every detail the enricher's ``publishing`` check gave while not ready."""

    def __init__(self, replica: Replica) -> None:
        self.details: set[str] = set()
        self._task = asyncio.create_task(self._watch(replica))

    async def _watch(self, replica: Replica) -> None:
        while True:  # Health has no event to wait on (tests only)
            ready, detail = replica.rt.health.checks["publishing"]
            if not ready:
                assert not replica.rt.health.ready
                self.details.add(detail)
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._task.cancel()


async def stored(nc: NATS, stream: str) -> bool:
    """Whether ``stream`` exists and holds a message."""
    try:
        return bool((await nc.jetstream().stream_info(stream)).state.messages)
    except NotFoundError:
        return False


async def raw_settled(nc: NATS) -> bool:
    info = await nc.jetstream().consumer_info(subjects.STREAM_RAW, "enricher-flows")
    return not info.num_ack_pending and not info.num_pending


async def made_again(
    replica: Replica, nc: NATS, stream: str, publish: Callable[[], Awaitable[object]]
) -> set[str]:
    """Delete ``stream``, then ``publish`` a raw batch whose result goes there; once the
    stream holds a message again, the raw batch is settled and the enricher is ready
    again: the details its ``publishing`` check gave meanwhile."""
    await nc.jetstream().delete_stream(stream)
    unready = Unready(replica)
    try:
        await publish()
        await eventually(lambda: stored(nc, stream), what=f"a message stored in {stream}")
        await eventually(lambda: raw_settled(nc), what="the raw batch settled")
        await eventually(lambda: replica.rt.health.ready, what="ready again")
    finally:
        unready.stop()
    return unready.details


async def test_a_deleted_output_stream_is_made_again_and_readyz_says_why_meanwhile(
    running: tuple[Replica, NATS],
) -> None:
    replica, nc = running
    js = nc.jetstream()
    before = (await js.stream_info(subjects.STREAM_FLOWS)).config
    flow = raw_flow("node-a", "127.0.0.1", "192.0.2.9", 4242, 443)
    details = await made_again(
        replica, nc, subjects.STREAM_FLOWS,
        lambda: publish_raw(nc, codec.RAW_FLOW, subjects.raw_flows("node-a"), [flow]),
    )  # fmt: skip
    assert any(subjects.STREAM_FLOWS in detail for detail in details)
    after = (await js.stream_info(subjects.STREAM_FLOWS)).config
    assert (after.subjects, after.max_age, after.max_bytes, after.duplicate_window) == (
        before.subjects, before.max_age, before.max_bytes, before.duplicate_window
    )  # fmt: skip
    message = await js.get_msg(subjects.STREAM_FLOWS, 1)
    (record,) = codec.decode(codec.FLOW, message.headers, message.data)
    assert record["source.port"] == 4242


async def test_a_deleted_dead_letter_stream_is_made_again_for_a_bad_raw_batch(
    running: tuple[Replica, NATS],
) -> None:
    replica, nc = running
    js = nc.jetstream()
    headers = codec.encode(codec.RAW_FLOW, []).headers
    details = await made_again(
        replica, nc, subjects.STREAM_DLQ,
        lambda: js.publish(subjects.raw_flows("node-a"), b"garbage\n", headers=headers),
    )  # fmt: skip
    assert any(subjects.STREAM_DLQ in detail for detail in details)
    dead = await js.get_msg(subjects.STREAM_DLQ, 1)
    assert dead.data == b"garbage\n"
