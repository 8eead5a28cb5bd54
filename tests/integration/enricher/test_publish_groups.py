"""Raw flow batches due together, published as one atomic batch (``Pipeline.handle_flows``)
against a real nats-server: one message per subject for the whole group, each raw batch's
marker on a message of its own, a batch redelivered alone finding its marker, and the
groups that cannot go as one published batch by batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest
from flowscope.core import codec, subjects
from flowscope.enricher.consuming import (
    _NOTHING,
    GROUP_MAX,
    GROUP_RECORDS,
    Pipeline,
    _group,
    raw_message_id,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from tests.integration.enricher.test_publishing import _pipeline as publishing_pipeline
from tests.support import nats_server

HOST = "10.0.0.1"  # this "machine's" address: its ends are `host`, the rest `external`
END_NS = time.time_ns()


def _record(n: int, src: str, dst: str) -> dict[str, Any]:
    """One raw flow record, distinct by ``n`` (its source port)."""
    return {
        "observer": "node-a", "start_ns": END_NS - 10**9, "end_ns": END_NS,
        "end_reason": "active_timeout", "proto": 6, "src": src, "dst": dst,
        "sport": 1024 + n % 64_000, "dport": 443 + n // 64_000, "bytes": 100 + n, "packets": 2, "rbytes": 300,
        "rpackets": 3,
    }  # fmt: skip


def _spread(batch: int, size: int = 8) -> list[dict[str, Any]]:
    """A raw batch whose records go to all four local-mode subjects (source and
    destination each `host` or `external`), distinct from every other batch's."""
    pairs = [(HOST, "10.9.0.1"), ("10.9.0.2", HOST), (HOST, HOST), ("10.9.0.3", "10.9.0.4")]
    return [_record(batch * 10_000 + i, *pairs[i % 4]) for i in range(size)]


def _raw(nc: NATS, sequence: int, records: list[dict[str, Any]], delivered: int = 1) -> Msg:
    """A raw flow batch as the work consumer delivers it: its reply subject carries the
    stream sequence and stored time its output's ids come from."""
    batch = codec.encode(codec.RAW_FLOW, records)
    reply = (f"$JS.ACK.{subjects.STREAM_RAW}.enricher-flows.{delivered}.{sequence}.{sequence}"
             f".1700000000.0")  # fmt: skip
    return Msg(_client=nc, subject=subjects.raw_flows("node-a"), reply=reply,
               data=batch.body, headers=batch.headers)  # fmt: skip


def _marker(msg: Msg) -> str:
    return f"enricher:flow:{raw_message_id(msg.metadata)}:done"


async def _pipeline(nc: NATS, atomic: bool = True) -> Pipeline:
    return await publishing_pipeline(nc, atomic, frozenset({HOST}))


def _grouped(pipeline: Pipeline) -> float:
    """``flowscope_enricher_grouped_batches_total`` of the pipeline's registry."""
    (family,) = pipeline.metrics.grouped_batches.collect()
    return next(x.value for x in family.samples if x.name.endswith("_total"))


async def _stored(js: JetStreamContext) -> list[tuple[str, str, int]]:
    """(subject, Nats-Msg-Id, records) of every message in the flows stream, in order."""
    count = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
    got = [await js.get_msg(subjects.STREAM_FLOWS, seq) for seq in range(1, count + 1)]
    return [
        (m.subject or "", (m.headers or {}).get("Nats-Msg-Id", ""),
         len(codec.decode(codec.FLOW, m.headers, m.data or b"")))
        for m in got
    ]  # fmt: skip


@pytest.fixture
async def nc() -> Any:
    server = nats_server.start()
    client = await nats.connect(server.url)
    try:
        yield client
    finally:
        await client.close()
        server.close()


async def test_batches_due_together_are_one_message_per_subject(nc: NATS) -> None:
    """Three raw batches over four subjects: four messages, not twelve; every record once;
    the last three messages carry the three batches' markers, in order."""
    pipeline = await _pipeline(nc)
    msgs = [_raw(nc, seq, _spread(seq)) for seq in (1, 2, 3)]
    await pipeline.handle_flows(msgs)
    stored = await _stored(nc.jetstream())
    assert len(stored) == 4
    assert len({subject for subject, _, _ in stored}) == 4
    assert sum(records for _, _, records in stored) == 24
    assert [msg_id for _, msg_id, _ in stored[-3:]] == [_marker(m) for m in msgs]
    first = raw_message_id(msgs[0].metadata)
    assert stored[0][1] == f"enricher:flow:{first}:3:{stored[0][0]}:0"
    assert _grouped(pipeline) == 3
    await pipeline.publisher.close()


async def test_a_batch_of_a_stored_group_redelivered_alone_is_not_stored_again(nc: NATS) -> None:
    """A replica stores a group and dies before acking; each batch comes back on its own
    (to any replica) and finds its marker: nothing more is stored."""
    pipeline = await _pipeline(nc)
    await pipeline.handle_flows([_raw(nc, seq, _spread(seq)) for seq in (4, 5, 6)])
    js = nc.jetstream()
    first = await _stored(js)
    await pipeline.handle_flows([_raw(nc, 5, _spread(5), delivered=2)])
    await pipeline.handle("flow", _raw(nc, 6, _spread(6), delivered=2))
    assert await _stored(js) == first
    # a redelivered batch in a new group goes its own way; the fresh ones as a group
    await pipeline.handle_flows([_raw(nc, 4, _spread(4), delivered=2),
                                 _raw(nc, 7, _spread(7)), _raw(nc, 8, _spread(8))])  # fmt: skip
    stored = await _stored(js)
    assert stored[: len(first)] == first and len(stored) == len(first) + 4
    assert sum(records for _, _, records in stored) == 5 * 8
    await pipeline.publisher.close()


async def test_more_batches_than_subjects_go_one_by_one(nc: NATS) -> None:
    """Five raw batches whose records all go to one subject cannot carry five markers in
    one batch: each is published on its own, its marker on its message."""
    pipeline = await _pipeline(nc)
    msgs = [_raw(nc, seq, [_record(seq * 10 + i, "10.9.1.1", "10.9.1.2") for i in range(3)])
            for seq in range(10, 15)]  # fmt: skip
    await pipeline.handle_flows(msgs)
    stored = await _stored(nc.jetstream())
    assert [msg_id for _, msg_id, _ in stored] == [_marker(m) for m in msgs]
    assert sum(records for _, _, records in stored) == 15
    assert _grouped(pipeline) == 0
    await pipeline.publisher.close()


async def test_without_atomic_batches_each_batch_goes_its_own_way(nc: NATS) -> None:
    """Streams that do not allow atomic batches: the group is published batch by batch,
    message by message, every record once, each batch's marker last of its own."""
    pipeline = await _pipeline(nc, atomic=False)
    msgs = [_raw(nc, seq, _spread(seq)) for seq in (20, 21)]
    await pipeline.handle_flows(msgs)
    stored = await _stored(nc.jetstream())
    assert len(stored) == 8 and sum(records for _, _, records in stored) == 16
    assert {_marker(m) for m in msgs} <= {msg_id for _, msg_id, _ in stored}
    await pipeline.publisher.close()


async def test_an_undecodable_batch_in_a_group_is_dead_lettered_the_rest_grouped(
    nc: NATS,
) -> None:
    """A group with a raw batch that is not a batch (a wrong schema header): that one is
    dead-lettered, the others still go as one."""
    pipeline = await _pipeline(nc)
    bad = _raw(nc, 31, _spread(31))
    bad.headers = {**(bad.headers or {}), codec.SCHEMA_HEADER: "raw.flow/99"}
    msgs = [_raw(nc, 30, _spread(30)), bad, _raw(nc, 32, _spread(32))]
    await pipeline.handle_flows(msgs)
    js = nc.jetstream()
    stored = await _stored(js)
    assert len(stored) == 4 and sum(records for _, _, records in stored) == 16
    assert [msg_id for _, msg_id, _ in stored[-2:]] == [_marker(msgs[0]), _marker(msgs[2])]
    dlq = await js.stream_info(subjects.STREAM_DLQ)
    assert dlq.state.messages == 1
    await pipeline.publisher.close()


async def test_batches_due_together_are_grouped_up_to_group_records(nc: NATS) -> None:
    """The work loop's grouping (``_group``): batches due now, in order, until
    GROUP_RECORDS records or GROUP_MAX batches; a batch not due yet, or one too many, is
    handed back to be handled next; a batch without a count it states (none, or a
    hostile one) goes alone; the queue's end is reported."""
    half = GROUP_RECORDS // 2
    now = time.monotonic()
    queue: asyncio.Queue[tuple[float, Msg] | None] = asyncio.Queue()
    msgs = [_raw(nc, seq, _spread(seq, size=half)) for seq in (60, 61, 62)]
    for msg in msgs[1:]:
        queue.put_nowait((now, msg))
    group = [msgs[0]]
    assert _group(group, queue) == (now, msgs[2])  # a third half is one too many
    assert group == msgs[:2]
    small = [_raw(nc, seq, _spread(seq, size=2)) for seq in range(63, 63 + GROUP_MAX + 1)]
    for msg in small[1:]:
        queue.put_nowait((now, msg))
    group = [small[0]]
    assert _group(group, queue) is _NOTHING and group == small[:GROUP_MAX]  # GROUP_MAX at most
    queue.get_nowait()  # (the one left over)
    queue.put_nowait((now + 60, msgs[1]))  # not due yet
    group = [msgs[0]]
    assert _group(group, queue) == (now + 60, msgs[1]) and group == [msgs[0]]
    for count in (None, "\u00b2", "7" * 5000, "-1"):  # none, a digit not 0-9, int()'s limit
        uncounted = _raw(nc, 70, _spread(70))
        uncounted.headers = {codec.SCHEMA_HEADER: "raw.flow/1"}
        if count is not None:
            uncounted.headers[codec.COUNT_HEADER] = count
        queue.put_nowait((now, uncounted))
        group = [msgs[0]]
        assert _group(group, queue) == (now, uncounted) and group == [msgs[0]]
    queue.put_nowait(None)
    group = [msgs[0]]
    assert _group(group, queue) is None and group == [msgs[0]]  # the end, taken


async def test_a_group_of_one_is_published_on_its_own(nc: NATS) -> None:
    """``handle_flows`` with one batch: published on its own, its marker last."""
    pipeline = await _pipeline(nc)
    msg = _raw(nc, 80, _spread(80))
    await pipeline.handle_flows([msg])
    stored = await _stored(nc.jetstream())
    assert len(stored) == 4 and stored[-1][1] == _marker(msg)
    await pipeline.publisher.close()


async def test_a_group_whose_first_batch_has_no_record_to_publish(nc: NATS) -> None:
    """A raw batch whose records are all bad (dead-lettered) first in a group: it adds no
    line but still its marker, and the group goes as one."""
    pipeline = await _pipeline(nc)
    bad = [{**_record(i, "10.9.2.1", "10.9.2.2"), "proto": 300} for i in range(3)]
    msgs = [_raw(nc, 50, bad), _raw(nc, 51, _spread(51)), _raw(nc, 52, _spread(52))]
    await pipeline.handle_flows(msgs)
    js = nc.jetstream()
    stored = await _stored(js)
    assert len(stored) == 4 and sum(records for _, _, records in stored) == 16
    assert [msg_id for _, msg_id, _ in stored[-3:]] == [_marker(m) for m in msgs]
    assert (await js.stream_info(subjects.STREAM_DLQ)).state.messages == 1
    await pipeline.publisher.close()
