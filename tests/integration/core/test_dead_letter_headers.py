"""Dead-letter copies of messages whose headers the copy cannot carry as they came, with
a real nats-server and messages written with the protocol's own HPUB (as any client
may write them; nats-py refuses to send such headers, nats-server stores them).

Before, ``messaging.dead_letter`` copied every header but ``Nats-*`` ones: a header
name that is not an HTTP token (``Bad/Key``) made nats-py refuse the copy, and the
message was nak'ed and redelivered for ever, counted as bad at each delivery; headers
taking nearly all of max_payload made the copy too large, and nats-server closed the
connection (the service exited 1, and again after each restart). Now such headers are
left out, their number in ``Flowscope-Dlq-Dropped-Headers``, and the message is
dead-lettered once."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator

import nats
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.exporter.settings import BatchSettings
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig

from tests.integration.enricher.test_dead_letters import MAX_PAYLOAD, config, pipeline
from tests.integration.exporter.test_lane import (
    BlockingSink,
    Lane,
    all_acked,
    dead_letters,
    lane_counter,
)
from tests.support import nats_server
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually

DROPPED = "Flowscope-Dlq-Dropped-Headers"
GARBAGE = b"not json\n"


async def hpub(port: int, subject: str, headers: list[tuple[str, str]], body: bytes) -> None:
    """Publish as a client writing the protocol itself: HPUB with these header lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()  # INFO
        lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        hdr = b"NATS/1.0\r\n" + lines + b"\r\n"
        size = len(hdr) + len(body)
        writer.write(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n')
        writer.write(
            b"HPUB %s %d %d\r\n%s%s\r\nPING\r\n" % (subject.encode(), len(hdr), size, hdr, body)
        )
        await writer.drain()
        assert (await reader.readline()).strip() == b"PONG"
    finally:
        writer.close()


def padding(max_payload: int, body: bytes, *others: tuple[str, str]) -> tuple[str, str]:
    """An ``X-Pad`` header that, with ``others``, makes the message max_payload long."""
    used = messaging.header_size(dict(others)) + messaging.header_size({"X-Pad": ""}) - 12
    return "X-Pad", "a" * (max_payload - len(body) - used)


@pytest.fixture
async def small_server() -> AsyncIterator[tuple[NatsServer, NATS]]:
    """A fresh server whose max_payload is 64 KiB, flowscope's streams made."""
    store = tempfile.mkdtemp(prefix="flowscope-dlq-headers-")
    server = nats_server.start(store_dir=store, extra=["-c", config(store)])
    client = await nats.connect(server.url)
    await messaging.ensure_streams(client.jetstream(), NatsSettings(url=server.url))
    try:
        yield server, client
    finally:
        await client.close()
        server.close()


async def test_dead_letter_leaves_out_a_header_nats_py_refuses(
    small_server: tuple[NatsServer, NATS],
) -> None:
    server, nc = small_server
    subject = subjects.raw_flows("n1")
    await hpub(server.port, subject, [("Bad/Key", "x"), ("Good", "y")], GARBAGE)
    stored = await nc.jetstream().get_msg(subjects.STREAM_RAW, 1)
    assert stored.headers == {"Bad/Key": "x", "Good": "y"}
    assert await messaging.dead_letter(
        nc, "test", subject, stored.headers, stored.data or b"", "bad", msg_id="m:1"
    )
    (copy,) = await dead_letters(nc)
    assert copy.data == GARBAGE
    assert copy.headers is not None and "Bad/Key" not in copy.headers
    assert copy.headers["Good"] == "y" and copy.headers[DROPPED] == "1"
    assert copy.headers[subjects.DLQ_REASON_HEADER] == "bad"


async def enricher_handles(nc: NATS, headers_of: int) -> tuple[float | None, float | None]:
    """Fetch the raw flow message and let an enricher pipeline handle it: its
    bad_messages and dead_lettered counts; the message must not come back."""
    sub = await nc.jetstream().pull_subscribe(
        subjects.raw_flows("n1"), "t", stream=subjects.STREAM_RAW,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
    )  # fmt: skip
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.headers is not None and len(msg.headers) == headers_of
    p, registry = pipeline(nc)
    await p.publisher.start()
    try:
        await p.handle("flow", msg)
    finally:
        await p.publisher.close()
    await messaging.flush(nc)  # the term sent
    info = await nc.jetstream().consumer_info(subjects.STREAM_RAW, "t")
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1  # terminated
    return (
        registry.get_sample_value("flowscope_enricher_bad_messages_total", {"reason": "malformed"}),
        registry.get_sample_value("flowscope_enricher_dead_lettered_total"),
    )


async def test_the_enricher_dead_letters_once_a_raw_message_with_a_refused_header(
    small_server: tuple[NatsServer, NATS],
) -> None:
    server, nc = small_server
    headers = [(codec.SCHEMA_HEADER, codec.RAW_FLOW.header), ("Bad/Key", "x")]
    await hpub(server.port, subjects.raw_flows("n1"), headers, GARBAGE)
    assert await enricher_handles(nc, 2) == (1, 1)
    (copy,) = await dead_letters(nc)
    assert copy.data == GARBAGE and copy.headers is not None
    assert copy.headers[codec.SCHEMA_HEADER] == codec.RAW_FLOW.header
    assert "Bad/Key" not in copy.headers and copy.headers[DROPPED] == "1"


async def test_the_enricher_dead_letters_a_raw_message_whose_headers_fill_max_payload(
    small_server: tuple[NatsServer, NATS],
) -> None:
    """The copy keeps the body, the reason and the contract's headers; the original's
    headers go (all of them: the schema header too), the connection stays."""
    server, nc = small_server
    schema = (codec.SCHEMA_HEADER, codec.RAW_FLOW.header)
    headers = [schema, padding(MAX_PAYLOAD, GARBAGE, schema)]
    await hpub(server.port, subjects.raw_flows("n1"), headers, GARBAGE)
    assert await enricher_handles(nc, 2) == (1, 1)
    (copy,) = await dead_letters(nc)
    assert copy.data == GARBAGE and copy.headers is not None
    assert copy.headers[DROPPED] == "2"
    assert not {"X-Pad", codec.SCHEMA_HEADER} & set(copy.headers)
    assert copy.headers[subjects.DLQ_SUBJECT_HEADER] == subjects.raw_flows("n1")
    assert copy.headers[subjects.DLQ_REASON_HEADER].startswith("malformed")
    assert copy.headers[messaging.MSG_ID_HEADER].startswith("enricher:dlq:")
    assert nc.is_connected and not nc.is_closed


@pytest.mark.parametrize("case", ["refused-name", "fills-max-payload"])
async def test_the_exporter_dead_letters_once_a_message_with_such_headers(
    small_server: tuple[NatsServer, NATS], case: str
) -> None:
    """The server's max_payload is 64 KiB here: JetStream stores no message whose
    headers take more, so a larger max_payload cannot be filled with headers."""
    server, nc = small_server
    schema = (codec.SCHEMA_HEADER, codec.FLOW.header)
    other = ("Bad/Key", "x") if case == "refused-name" else padding(nc.max_payload, GARBAGE, schema)
    await hpub(server.port, subjects.flows("shop", "payments"), [schema, other], GARBAGE)
    sink = BlockingSink()
    sink.release.set()
    lane = Lane(sink, nc, BatchSettings(max_delay=0.05, ack_wait=1.0, retry_initial=0.1))
    try:
        await eventually(lambda: all_acked(nc, sink.name), what="the bad message acked")
    finally:
        await lane.stop()
    (copy,) = await dead_letters(nc)
    assert copy.data == GARBAGE and copy.headers is not None
    assert other[0] not in copy.headers
    assert copy.headers[DROPPED] == ("1" if case == "refused-name" else "2")
    assert copy.headers[subjects.DLQ_SUBJECT_HEADER] == subjects.flows("shop", "payments")
    assert lane_counter(lane, "bad_messages_total", sink.name) == 1
    assert nc.is_connected
