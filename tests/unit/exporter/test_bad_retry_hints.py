"""Retry hints a receiver garbles (a ``Retry-After`` that is no delay, a
``grpc-status-details-bin`` trailer that is no ``google.rpc.Status``) made the OTLP
sink's export raise, which the lane takes for a bug in the sink: the batch was nak'ed
after the lane's backoff, over and over, instead of retried (or refused) by the OTLP
rules. A garbled hint is now ignored: the answer is handled as one without it."""

from __future__ import annotations

import grpc
import pytest
from aiohttp import web
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import parse_retry_after
from flowscope.exporter.sink import ExportResult, Kind
from google.rpc import code_pb2, status_pb2

from tests.unit.exporter.sample import flow
from tests.unit.exporter.test_elasticsearch_sink import serve
from tests.unit.exporter.test_odd_answers import export_to_grpc
from tests.unit.exporter.test_otlp_sink import count, make_sink


def status_with_a_broken_retry_info() -> bytes:
    """A ``google.rpc.Status`` whose RetryInfo detail is not a RetryInfo message."""
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="slow down")
    detail = status.details.add()
    detail.type_url = "type.googleapis.com/google.rpc.RetryInfo"
    detail.value = b"\xff\xff\xff"
    return status.SerializeToString()


@pytest.mark.parametrize("value", ["²", "٣", "1²"])
def test_a_retry_after_of_other_digits_is_no_delay(value: str) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("status", [429, 503])
async def test_an_http_retry_after_that_is_no_number_is_retried_with_backoff(status: int) -> None:
    attempts: list[int] = []

    async def logs(request: web.Request) -> web.Response:
        await request.read()
        attempts.append(1)
        if len(attempts) == 1:
            return web.Response(status=status, headers={"Retry-After": "²"})
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/logs", logs)
    runner, port = await serve(app)
    sink, metrics = make_sink(f"http://127.0.0.1:{port}", "http/protobuf")
    try:
        result = await sink.export(Kind.FLOW, [flow(0), flow(1)])
    finally:
        await sink.close()
        await runner.cleanup()
    assert not result.rejected and not result.deferred
    assert len(attempts) == 2
    assert count(metrics.retried) == 2


async def grpc_export(
    code: grpc.StatusCode, details: bytes
) -> tuple[ExportResult, int, ExporterMetrics]:
    """Export two flows to a gRPC receiver that first answers ``code`` with
    ``details`` as its ``grpc-status-details-bin`` trailer, then OK. Returns the
    result, the attempts made and the sink's metrics."""
    attempts: list[int] = []

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        attempts.append(1)
        if len(attempts) == 1:
            await context.abort(
                code,
                "test: garbled details",
                trailing_metadata=(("grpc-status-details-bin", details),),
            )
        return b""

    result, metrics = await export_to_grpc(export)
    return result, len(attempts), metrics


@pytest.mark.parametrize(
    "details", [b"\xff\xff\xff", status_with_a_broken_retry_info()], ids=["status", "retry-info"]
)
async def test_grpc_unavailable_with_garbled_details_is_retried(details: bytes) -> None:
    result, attempts, metrics = await grpc_export(grpc.StatusCode.UNAVAILABLE, details)
    assert not result.rejected and not result.deferred
    assert attempts == 2
    assert count(metrics.retried) == 2


@pytest.mark.parametrize(
    "details", [b"\xff\xff\xff", status_with_a_broken_retry_info()], ids=["status", "retry-info"]
)
async def test_grpc_resource_exhausted_with_garbled_details_is_as_without(details: bytes) -> None:
    """RESOURCE_EXHAUSTED without a RetryInfo is permanent: the records are refused."""
    result, attempts, _ = await grpc_export(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
    assert set(result.rejected) == {0, 1}
    assert all("RESOURCE_EXHAUSTED" in reason for reason in result.rejected.values())
    assert attempts == 1
