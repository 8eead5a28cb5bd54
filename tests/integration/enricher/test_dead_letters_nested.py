"""A bad raw record nested deeper than orjson writes (it reads up to 1 024 levels of lists
and objects, writes at most 254), with a real nats-server: dead-lettered with the raw
batch as it came, the raw batch acked, the good records published — re-encoding it for
the copy must not end the handling (the enricher stopped, and every replica the batch
was redelivered to after it)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import orjson
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import raw_flow, raw_socket
from tests.integration.enricher.test_dead_letters import dead_letters, fetched, pipeline
from tests.support import nats_server

NESTED = b"[" * 300 + b"]" * 300  # a list 300 levels deep: read, not written, by orjson
DNS = {
    "observer": "n1", "time_ns": 5, "id": 9, "qname": "db.data.svc", "qtype": "A",
    "rcode": "NOERROR", "client": "127.0.0.1", "client_port": 3333, "server": "192.0.2.1",
    "server_port": 53, "latency_ns": 1000,
    "answers": [{"name": "db.data.svc", "type": "A", "ttl": 5, "data": "192.0.2.2"}],
}  # fmt: skip


@pytest.fixture
async def nc() -> AsyncIterator[NATS]:
    server = nats_server.start()
    client = await nats.connect(server.url)
    await messaging.ensure_streams(client.jetstream(), NatsSettings(url=server.url))
    try:
        yield client
    finally:
        await client.close()
        server.close()


def _nested(record: dict[str, object], key: str) -> bytes:
    """``record`` as a raw line whose ``key`` holds :data:`NESTED`."""
    line = orjson.dumps({**record, key: 0})
    return line.replace(f'"{key}":0'.encode(), f'"{key}":'.encode() + NESTED) + b"\n"


@pytest.mark.parametrize(
    ("kind", "schema", "subject", "good", "bad"),
    [
        ("flow", codec.RAW_FLOW, subjects.raw_flows("n1"),
         raw_flow("n1", "127.0.0.1", "192.0.2.1", 1, 2), raw_flow("n1", "127.0.0.1", "192.0.2.1", 3, 4)),
        ("socket", codec.RAW_SOCKET, subjects.raw_sockets("n1"),
         raw_socket("n1", "connect", "127.0.0.1", 1, "192.0.2.1", 2, 7, "curl"),
         raw_socket("n1", "connect", "127.0.0.1", 3, "192.0.2.1", 4, 7, "curl")),
        ("dns", codec.RAW_DNS, subjects.raw_dns("n1"), DNS, {**DNS, "id": 10}),
    ],
)  # fmt: skip
async def test_a_record_nested_too_deep_to_write_is_dead_lettered_as_it_came(
    nc: NATS,
    kind: str,
    schema: codec.Schema,
    subject: str,
    good: dict[str, object],
    bad: dict[str, object],
) -> None:
    key = {"flow": "bytes", "socket": "pid", "dns": "latency_ns"}[kind]
    body = orjson.dumps(good) + b"\n" + _nested(bad, key)
    headers = {codec.SCHEMA_HEADER: schema.header, codec.COUNT_HEADER: "2"}
    (msg,) = await fetched(nc, subject, headers, body)
    p, registry = pipeline(nc)
    await p.publisher.start()
    try:
        await p.handle(kind, msg)
    finally:
        await p.publisher.close()
    (copy,) = await dead_letters(nc)
    assert copy.data == body
    assert copy.headers[subjects.DLQ_SUBJECT_HEADER] == subject
    assert "#1" in copy.headers[subjects.DLQ_REASON_HEADER]
    assert registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": kind}) == 1
    info = await nc.jetstream().consumer_info(subjects.STREAM_RAW, "t")
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1
    if kind != "socket":  # the good record's message
        stream = subjects.STREAM_FLOWS if kind == "flow" else subjects.STREAM_DNS
        assert (await nc.jetstream().stream_info(stream)).state.messages == 1
