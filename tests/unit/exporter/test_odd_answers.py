"""Odd records and odd answers that made a sink's export raise or dead-letter records
that were fine: each is now one record refused, or the batch sent again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
import pytest
from aiohttp import web
from flowscope.core import codec, records
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.sink import ExportResult, Kind

from tests.support.otlp_receivers import HttpReceiver
from tests.unit.exporter.sample import flow
from tests.unit.exporter.test_elasticsearch_sink import bulk_answer, export_to_bulk
from tests.unit.exporter.test_otlp_sink import count, make_sink

GrpcExport = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
DEPTH = 800  # the decoder accepts 1,024 levels; the encoder's recursion reached ~450


def nested_record() -> dict[str, Any]:
    """A flow record that passes the contract with an unknown key nested ``DEPTH`` deep,
    decoded from the wire as the exporter decodes it."""
    line = orjson.dumps(flow(1))[:-1] + b',"x.deep":' + b"[" * DEPTH + b"]" * DEPTH + b"}\n"
    [record] = codec.decode_body(line)
    return records.validate_flow(record)


async def test_a_value_nested_too_deeply_is_refused_alone() -> None:
    receiver = await HttpReceiver().start()
    sink, _ = make_sink(receiver.endpoint, "http/protobuf")
    try:
        result = await sink.export(Kind.FLOW, [flow(0), nested_record(), flow(2)])
    finally:
        await sink.close()
        await receiver.stop()
    assert result.rejected == {1: "cannot encode as OTLP: attribute x.deep: nested too deeply"}
    assert not result.deferred
    ports = [
        next(a.value.int_value for a in lr.attributes if a.key == "source.port")
        for lr in receiver.received.log_records
    ]
    assert ports == [flow(0)["source.port"], flow(2)["source.port"]]


async def export_to_grpc(export: GrpcExport) -> tuple[ExportResult, ExporterMetrics]:
    """Export two flows with a gRPC sink whose Export calls ``export`` answers."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sink, metrics = make_sink(f"http://127.0.0.1:{port}", "grpc")
    try:
        return await sink.export(Kind.FLOW, [flow(0), flow(1)]), metrics
    finally:
        await sink.close()
        await server.stop(None)


async def test_a_grpc_ok_with_an_unreadable_message_is_sent_again() -> None:
    """As an HTTP 2xx with a body that is no OTLP response: retried and counted, not
    dead-lettered (grpc's own deserializer answered None, read as a refusal)."""
    answers = [b"\xff\xff\xff", b""]  # not a protobuf message; then an empty response

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answers.pop(0) if answers else b""

    result, metrics = await export_to_grpc(export)
    assert not result.rejected and not result.deferred
    assert answers == []
    assert count(metrics.bad_responses) == 1
    assert count(metrics.retried) == 2


@pytest.mark.parametrize(
    "item",
    [{}, {"create": None}, {"create": {"status": "429"}}, {"create": {}}, "create"],
    ids=["empty", "null-result", "string-status", "no-status", "not-an-object"],
)
async def test_a_bulk_item_without_a_status_is_sent_again(item: Any) -> None:
    """An item that is no ``{action: {"status": …}}``: what became of the record is
    unknown, so it is sent again (its ``_id`` makes that safe), neither refused nor a
    raised export."""
    sent: list[int] = []

    async def bulk(request: web.Request) -> web.Response:
        sent.append((await request.read()).count(b"\n") // 2)
        stored = {"create": {"status": 201}}
        answer = {"errors": True, "items": [stored, item]} if len(sent) == 1 else None
        if answer is None:
            answer = {"errors": False, "items": [stored] * sent[-1]}
        return bulk_answer(answer)

    result = await export_to_bulk(bulk, [flow(0), flow(1)])
    assert sent == [2, 1]
    assert not result.rejected and not result.deferred


async def test_a_refusal_whose_error_is_text_is_dead_lettered_with_it() -> None:
    async def bulk(request: web.Request) -> web.Response:
        await request.read()
        answer = {"errors": True, "items": [{"create": {"status": 400, "error": "bad doc"}}]}
        return bulk_answer(answer)

    result = await export_to_bulk(bulk, [flow(0)])
    assert result.rejected == {0: "400 : bad doc"}
