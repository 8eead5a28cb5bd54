"""Dead-letter copies of the enricher's bad input, with a real nats-server whose
max_payload is small: each copy fits (headers count against the limit too), is stored
through JetStream once however often its raw batch comes back, and a batch whose bad
records grow when re-encoded is dead-lettered in pieces instead of ending the process."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator

import nats
import orjson
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg
from prometheus_client import CollectorRegistry

from tests.integration.enricher.conftest import raw_flow, raw_socket
from tests.support import nats_server

MAX_PAYLOAD = 65536


def config(store: str) -> str:
    """A server configuration file setting max_payload, in ``store``."""
    path = os.path.join(store, "server.conf")
    with open(path, "w") as f:
        f.write(f"max_payload: {MAX_PAYLOAD}\n")
    return path


@pytest.fixture
async def small_nc() -> AsyncIterator[NATS]:
    """A client of a fresh server whose max_payload is 64 KiB, flowscope's streams made."""
    store = tempfile.mkdtemp(prefix="flowscope-dlq-")
    server = nats_server.start(store_dir=store, extra=["-c", config(store)])
    nc = await nats.connect(server.url)
    await messaging.ensure_streams(nc.jetstream(), NatsSettings(url=server.url))
    try:
        yield nc
    finally:
        await nc.close()
        server.close()


def pipeline(nc: NATS) -> tuple[Pipeline, CollectorRegistry]:
    registry = CollectorRegistry()
    enricher = Enricher(LocalResolver(frozenset()), SocketTable(10, 1), NameCache(1, 2, 10),
                        Observers(1))  # fmt: skip
    return Pipeline(nc, enricher, Metrics.create(registry)), registry


async def fetched(
    nc: NATS, subject: str, headers: dict[str, str], body: bytes, times: int = 1
) -> list[Msg]:
    """Publish one raw message and fetch it ``times`` times (redelivered after ack_wait)."""
    js = nc.jetstream()
    await js.publish(subject, body, headers=headers)
    sub = await js.pull_subscribe(subject, "t", stream=subjects.STREAM_RAW,
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=1))  # fmt: skip
    msgs = []
    for _ in range(times):
        msgs += await sub.fetch(1, timeout=5)
    return msgs


async def dead_letters(nc: NATS) -> list[RawStreamMsg]:
    js = nc.jetstream()
    n = (await js.stream_info(subjects.STREAM_DLQ)).state.messages
    return [await js.get_msg(subjects.STREAM_DLQ, seq) for seq in range(1, n + 1)]


async def handled_flow(
    nc: NATS, headers: dict[str, str], body: bytes
) -> tuple[list[RawStreamMsg], CollectorRegistry]:
    """One raw flow message on node n1's subject, fetched and handled by a new pipeline:
    the dead-letter copies it made, and the pipeline's metrics."""
    (msg,) = await fetched(nc, subjects.raw_flows("n1"), headers, body)
    p, registry = pipeline(nc)
    await p.publisher.start()
    try:
        await p.handle("flow", msg)
    finally:
        await p.publisher.close()
    return await dead_letters(nc), registry


@pytest.mark.parametrize("short", [240, 100])
async def test_an_undecodable_message_near_the_limit_is_dead_lettered(
    small_nc: NATS, short: int
) -> None:
    """Body and headers together just under max_payload: the copy's own headers (reason,
    subject, id) would push it over, and the server would close the connection. The
    reason is shortened instead (``short`` 240: the body is kept byte for byte); when
    even that is not enough (100), the body is cut and its length given in a header."""
    body = b"x" * (MAX_PAYLOAD - short) + b"\n"
    headers = {codec.SCHEMA_HEADER: codec.RAW_FLOW.header, codec.COUNT_HEADER: "1"}
    (copy,), registry = await handled_flow(small_nc, headers, body)
    assert copy.headers[subjects.DLQ_SUBJECT_HEADER] == subjects.raw_flows("n1")
    reason = copy.headers.get(subjects.DLQ_REASON_HEADER, "")
    assert reason.startswith("malformed") or "malformed".startswith(reason)
    if short == 240:
        assert copy.data == body
        assert 0 < len(reason) < 80  # the full one: 80 characters
    else:
        assert copy.headers[subjects.DLQ_TRUNCATED_HEADER] == str(len(body))
        assert body.startswith(copy.data) and len(copy.data) > MAX_PAYLOAD - 500
    assert registry.get_sample_value("flowscope_enricher_dead_lettered_total") == 1
    assert small_nc.is_connected


async def test_bad_records_that_grow_when_encoded_are_dead_lettered_in_pieces(
    small_nc: NATS,
) -> None:
    """Four bad records of ~12 KB each as received, ~44 KB each re-encoded (``1e9`` →
    ``1000000000.0``): more than one message holds. All four reach the dead-letter
    stream, each piece with its own first record's reason, and the raw batch is acked."""
    lines = []
    for i in range(4):
        rec = orjson.dumps({**raw_flow("n1", "127.0.0.1", "192.0.2.1", i, 2), "bytes": "x"})
        lines.append(rec[:-1] + b',"pad":[' + b",".join([b"1e9"] * 3000) + b"]}\n")
    headers = {codec.SCHEMA_HEADER: codec.RAW_FLOW.header, codec.COUNT_HEADER: "4"}
    copies, registry = await handled_flow(small_nc, headers, b"".join(lines))
    assert len(copies) > 1
    records = [r for c in copies for r in codec.decode(codec.RAW_FLOW, c.headers, c.data)]
    assert [r["sport"] for r in records] == [0, 1, 2, 3]
    assert all("bytes" in c.headers[subjects.DLQ_REASON_HEADER] for c in copies)
    assert registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "flow"}) == 4
    info = await small_nc.jetstream().consumer_info(subjects.STREAM_RAW, "t")
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1


async def test_a_redelivered_batchs_bad_records_are_stored_once(small_nc: NATS) -> None:
    bad = raw_socket("n1", "teleport", "127.0.0.1", 1, "192.0.2.1", 2, 1, "x")
    batch = codec.encode(codec.RAW_SOCKET, [bad])
    first, second = await fetched(
        small_nc, subjects.raw_sockets("n1"), batch.headers, batch.body, times=2
    )
    assert second.metadata.num_delivered == 2
    p, registry = pipeline(small_nc)
    await p.publisher.start()
    await p.handle("socket", first)
    await p.handle("socket", second)
    assert len(await dead_letters(small_nc)) == 1
    assert registry.get_sample_value("flowscope_enricher_dead_lettered_total") == 1
    assert (
        registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "socket"}) == 1
    )
    await p.publisher.close()


async def test_each_dead_letter_copy_names_the_problem_of_every_record_in_it(
    small_nc: NATS,
) -> None:
    """Bad records with different problems in one raw batch, between good ones: one copy
    per problem, whose reason lists the places of exactly the records it holds (a copy
    used to carry its first record's reason for all of them)."""
    good = [raw_flow("n1", "127.0.0.1", "192.0.2.1", i, 80) for i in (10, 11)]
    batch = [
        good[0],
        raw_flow("n1", "127.0.0.1", "192.0.2.1", 1, 80, bytes="x"),
        raw_flow("n1", "127.0.0.1", "192.0.2.1", 2, 80, end_reason="teleport"),
        raw_flow("n1", "127.0.0.1", "192.0.2.1", 3, 80, bytes="y"),
        good[1],
    ]
    encoded = codec.encode(codec.RAW_FLOW, batch)
    copies, registry = await handled_flow(small_nc, encoded.headers, encoded.body)
    held = {
        c.headers[subjects.DLQ_REASON_HEADER]: [
            r["sport"] for r in codec.decode(codec.RAW_FLOW, c.headers, c.data)
        ]
        for c in copies
    }
    assert held == {
        "bad-record: raw.flow records #1, #3: bytes must be int": [1, 3],
        "bad-record: raw.flow record #2: unknown end_reason 'teleport'": [2],
    }
    assert registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "flow"}) == 3


async def test_a_batch_of_records_with_many_problems_makes_few_copies(small_nc: NATS) -> None:
    """20 bad records, each naming its own bad address: one copy for each of the first 8
    problems, one more for the other 12 records whose reason lists the first 8 of theirs
    (before: 20 copies — a raw batch of 4 000 made 4 000)."""
    batch = [raw_flow("n1", f"bad-{i}", "192.0.2.1", i, 80) for i in range(20)]
    encoded = codec.encode(codec.RAW_FLOW, batch)
    copies, registry = await handled_flow(small_nc, encoded.headers, encoded.body)
    held = [[r["sport"] for r in codec.decode(codec.RAW_FLOW, c.headers, c.data)] for c in copies]
    assert held == [[i] for i in range(8)] + [list(range(8, 20))]
    reasons = [c.headers[subjects.DLQ_REASON_HEADER] for c in copies]
    assert reasons[0] == "bad-record: raw.flow record #0: src is not an IP address: 'bad-0'"
    assert reasons[8].startswith("bad-record: raw.flow record #8: src is not an IP address")
    assert reasons[8].endswith("'bad-15'; and 4 more problems")
    assert registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "flow"}) == 20
