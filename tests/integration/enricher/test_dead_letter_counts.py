"""Bad input is counted once however often its raw batch comes back: a batch whose first
attempt failed (its output stream or the dead-letter stream missing) was counted on every
delivery (an undecodable message) or on none (bad records counted on the first delivery
only, which never reached them). Counted now when its dead-letter copy is stored anew."""

from __future__ import annotations

from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import raw_flow
from tests.integration.enricher.test_dead_letters import dead_letters, fetched, pipeline


async def test_bad_records_are_counted_when_their_batch_comes_back_after_a_failed_publish(
    clean_nc: NATS,
) -> None:
    js = clean_nc.jetstream()
    await messaging.ensure_streams(js, NatsSettings())
    good = raw_flow("n1", "127.0.0.1", "192.0.2.9", 4242, 443)
    bad = raw_flow("n1", "127.0.0.1", "192.0.2.9", 4243, 443, bytes="many")
    batch = codec.encode(codec.RAW_FLOW, [good, bad])
    first, second = await fetched(
        clean_nc, subjects.raw_flows("n1"), batch.headers, batch.body, times=2
    )
    p, registry = pipeline(clean_nc)
    await p.publisher.start()
    try:
        await js.delete_stream(subjects.STREAM_FLOWS)
        await p.handle("flow", first)  # no stream for the output: nak'ed, nothing counted
        await messaging.ensure_streams(js, NatsSettings())
        await p.handle("flow", second)
        await p.handle("flow", second)  # its ack lost: once more, stored already
    finally:
        await p.publisher.close()
    assert len(await dead_letters(clean_nc)) == 1
    count = registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "flow"})
    assert count == 1


async def test_an_undecodable_message_is_counted_once_when_its_first_copy_failed(
    clean_nc: NATS,
) -> None:
    js = clean_nc.jetstream()
    await messaging.ensure_streams(js, NatsSettings())
    headers = codec.encode(codec.RAW_FLOW, []).headers
    first, second = await fetched(
        clean_nc, subjects.raw_flows("n1"), headers, b"garbage\n", times=2
    )
    p, registry = pipeline(clean_nc)
    await p.publisher.start()
    try:
        await js.delete_stream(subjects.STREAM_DLQ)
        await p.handle("flow", first)  # the copy not stored: nak'ed
        await messaging.ensure_streams(js, NatsSettings())
        await p.handle("flow", second)
        await p.handle("flow", second)  # its term lost: once more, the copy a duplicate
    finally:
        await p.publisher.close()
    assert len(await dead_letters(clean_nc)) == 1
    count = registry.get_sample_value(
        "flowscope_enricher_bad_messages_total", {"reason": "malformed"}
    )
    assert count == 1
