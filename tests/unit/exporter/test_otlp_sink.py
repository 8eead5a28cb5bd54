"""The OTLP sink against real gRPC and HTTP receivers: delivery and each retry rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import OtlpSink, parse_retry_after
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.otlp_encoding import LogsEncoder, resource_attributes
from flowscope.exporter.settings import OtlpSettings
from flowscope.exporter.sink import Kind
from prometheus_client import CollectorRegistry

from tests.support.otlp_receivers import Answer, GrpcReceiver, HttpReceiver
from tests.unit.exporter.sample import dns, flow
from tests.unit.exporter.test_elasticsearch_sink import serve
from tests.unit.exporter.test_otlp_encoding import plain


@pytest.fixture
async def grpc_receiver() -> AsyncIterator[GrpcReceiver]:
    receiver = await GrpcReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def http_receiver() -> AsyncIterator[HttpReceiver]:
    receiver = await HttpReceiver().start()
    yield receiver
    await receiver.stop()


def make_sink(endpoint: str, protocol: str, **settings: object) -> tuple[OtlpSink, ExporterMetrics]:
    target = resolve(OtlpSettings(endpoint=endpoint, protocol=protocol, **settings), {})  # type: ignore[arg-type]
    metrics = ExporterMetrics.create(CollectorRegistry())
    encoder = LogsEncoder(resource_attributes("test-cluster"))
    return OtlpSink(target, encoder, metrics, backoff=(0.05, 0.2)), metrics


def count(metric: object) -> float:
    return metric.labels("otlp")._value.get()  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_records_arrive_attribute_by_attribute(
    protocol: str, grpc_receiver: GrpcReceiver, http_receiver: HttpReceiver
) -> None:
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    sink, _ = make_sink(receiver.endpoint, protocol, headers="authorization=Bearer%20t0k")
    records = [flow(i) for i in range(5)]
    result = await sink.export(Kind.FLOW, records)
    assert not result.rejected and not result.deferred
    result = await sink.export(Kind.DNS, [dns(1)])
    assert not result.rejected and not result.deferred
    await sink.close()
    logs = receiver.received.log_records
    assert len(logs) == 6
    for record, lr in zip(records, logs, strict=False):
        assert lr.event_name == "flowscope.flow"
        assert lr.time_unix_nano == record["flow.end_ns"]
        assert lr.observed_time_unix_nano > record["flow.end_ns"]
        assert {kv.key: plain(kv.value) for kv in lr.attributes} == {
            **record,
            "event.name": "flowscope.flow",
        }
    assert logs[5].event_name == "flowscope.dns"
    assert logs[5].time_unix_nano == dns(1)["time_ns"]
    resource = receiver.received.requests[0].resource_logs[0].resource
    assert {kv.key: plain(kv.value) for kv in resource.attributes}[
        "k8s.cluster.name"
    ] == "test-cluster"
    assert receiver.received.metadata[0]["authorization"] == "Bearer t0k"


async def test_http_bodies_are_gzip(http_receiver: HttpReceiver) -> None:
    sink, _ = make_sink(http_receiver.endpoint, "http/protobuf")
    await sink.export(Kind.FLOW, [flow(1)])
    sink2, _ = make_sink(http_receiver.endpoint, "http/protobuf", compression="none")
    await sink2.export(Kind.FLOW, [flow(2)])
    await sink.close()
    await sink2.close()
    assert http_receiver.encodings == ["gzip", ""]
    assert len(http_receiver.received.log_records) == 2


async def test_grpc_unavailable_is_retried(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.received.script.extend([Answer("unavailable"), Answer("unavailable")])
    sink, metrics = make_sink(grpc_receiver.endpoint, "grpc")
    result = await sink.export(Kind.FLOW, [flow(1), flow(2)])
    await sink.close()
    assert not result.rejected and not result.deferred
    assert [kind for _, kind in grpc_receiver.received.attempts] == [
        "unavailable",
        "unavailable",
        "ok",
    ]
    assert len(grpc_receiver.received.log_records) == 2
    assert count(metrics.retried) == 4  # two records, two retries


async def test_grpc_resource_exhausted_with_retry_info_waits_the_given_delay(
    grpc_receiver: GrpcReceiver,
) -> None:
    grpc_receiver.received.script.append(Answer("exhausted", retry_delay=0.6))
    sink, _ = make_sink(grpc_receiver.endpoint, "grpc")
    result = await sink.export(Kind.FLOW, [flow(1)])
    await sink.close()
    assert not result.rejected and not result.deferred
    (first, _), (second, _) = grpc_receiver.received.attempts
    assert second - first >= 0.6  # the server's RetryInfo, not the 0.05 s backoff
    assert len(grpc_receiver.received.log_records) == 1


async def test_grpc_resource_exhausted_without_retry_info_is_permanent(
    grpc_receiver: GrpcReceiver,
) -> None:
    grpc_receiver.received.script.append(Answer("exhausted"))
    sink, _ = make_sink(grpc_receiver.endpoint, "grpc")
    result = await sink.export(Kind.FLOW, [flow(1), flow(2)])
    await sink.close()
    assert set(result.rejected) == {0, 1}
    assert "RESOURCE_EXHAUSTED" in result.rejected[0]
    assert len(grpc_receiver.received.attempts) == 1


async def test_grpc_invalid_argument_is_not_retried(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.received.script.append(Answer("invalid"))
    sink, metrics = make_sink(grpc_receiver.endpoint, "grpc")
    result = await sink.export(Kind.FLOW, [flow(1)])
    await sink.close()
    assert "INVALID_ARGUMENT" in result.rejected[0]
    assert len(grpc_receiver.received.attempts) == 1
    assert count(metrics.retried) == 0


async def test_http_503_honours_retry_after(http_receiver: HttpReceiver) -> None:
    http_receiver.received.script.append(Answer("http503", retry_after=1))
    sink, metrics = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(1)])
    await sink.close()
    assert not result.rejected and not result.deferred
    (first, _), (second, _) = http_receiver.received.attempts
    assert second - first >= 1.0
    assert count(metrics.retried) == 1


@pytest.mark.parametrize(
    ("status", "retried"), [(429, True), (502, True), (504, True), (500, False), (413, False)]
)
async def test_http_statuses_retried_per_the_specification(
    status: int, retried: bool, http_receiver: HttpReceiver
) -> None:
    http_receiver.received.script.append(Answer("http", status=status))
    sink, _ = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(1)])
    await sink.close()
    if retried:
        assert not result.rejected and len(http_receiver.received.log_records) == 1
        assert len(http_receiver.received.attempts) == 2
    else:
        assert result.rejected[0] == f"HTTP {status}: test: scripted"
        assert len(http_receiver.received.attempts) == 1


@pytest.mark.parametrize("status", [204, 202, 200])
async def test_http_2xx_without_a_body_is_success(status: int, http_receiver: HttpReceiver) -> None:
    """Any 2xx means the receiver took the records (the Collector's otlphttp exporter
    agrees): 204 No Content, 202 Accepted from a queueing gateway."""
    http_receiver.received.script.append(Answer("empty", status=status))
    sink, metrics = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(i) for i in range(3)])
    await sink.close()
    assert not result.rejected and not result.deferred
    assert len(http_receiver.received.attempts) == 1
    assert len(http_receiver.received.log_records) == 3
    assert count(metrics.bad_responses) == 0


@pytest.mark.parametrize("status", [200, 202])
async def test_http_json_partial_success_is_read(status: int, http_receiver: HttpReceiver) -> None:
    http_receiver.received.script.append(Answer("json", status=status, rejected=2))
    sink, metrics = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(i) for i in range(3)])
    await sink.close()
    assert not result.rejected and not result.deferred
    assert len(http_receiver.received.attempts) == 1
    assert count(metrics.partial_rejected) == 2


async def test_http_400_is_rejected_with_the_reason(http_receiver: HttpReceiver) -> None:
    http_receiver.received.script.append(Answer("http400"))
    sink, _ = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(1)])
    await sink.close()
    assert result.rejected[0] == "HTTP 400: test: bad request"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_partial_success_is_counted_not_retried(
    protocol: str, grpc_receiver: GrpcReceiver, http_receiver: HttpReceiver
) -> None:
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    receiver.received.script.append(Answer("partial", rejected=2))
    sink, metrics = make_sink(receiver.endpoint, protocol)
    result = await sink.export(Kind.FLOW, [flow(i) for i in range(3)])
    await sink.close()
    assert not result.rejected and not result.deferred
    assert result.unconfirmed == 2  # dropped by the receiver: not counted as exported
    assert len(receiver.received.attempts) == 1
    assert count(metrics.partial_rejected) == 2


async def test_unreachable_receiver_is_retried_until_shutdown_then_deferred() -> None:
    receiver = await GrpcReceiver().start()
    port = receiver.port
    await receiver.stop()
    sink, metrics = make_sink(f"http://127.0.0.1:{port}", "grpc", timeout=0.5)
    export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1), flow(2)]))
    await asyncio.sleep(1.0)
    assert not export.done()
    await sink.shutdown()
    result = await asyncio.wait_for(export, 5)
    await sink.close()
    assert result.deferred == {0, 1}
    assert count(metrics.retried) >= 2


async def test_receiver_coming_back_gets_the_batch() -> None:
    receiver = await HttpReceiver().start()
    port = receiver.port
    await receiver.stop()
    sink, _ = make_sink(f"http://127.0.0.1:{port}", "http/protobuf")
    export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1)]))
    await asyncio.sleep(0.5)
    back = await HttpReceiver().start(port)
    try:
        result = await asyncio.wait_for(export, 10)
    finally:
        await sink.close()
        await back.stop()
    assert not result.deferred and not result.rejected
    assert len(back.received.log_records) == 1


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_http_200_with_an_unreadable_body_is_retried_with_backoff(
    http_receiver: HttpReceiver,
) -> None:
    """A proxy's HTML page with status 200 is no OTLP answer: retried after backoff and
    counted, not an exception escaping the sink (which made the lane nak in a hot loop)."""
    http_receiver.received.script.extend([Answer("garbage"), Answer("garbage")])
    sink, metrics = make_sink(http_receiver.endpoint, "http/protobuf")
    result = await sink.export(Kind.FLOW, [flow(1), flow(2)])
    await sink.close()
    assert not result.rejected and not result.deferred
    times = [t for t, _ in http_receiver.received.attempts]
    assert [kind for _, kind in http_receiver.received.attempts] == ["garbage", "garbage", "ok"]
    assert times[1] - times[0] >= 0.025 and times[2] - times[1] >= 0.05  # [d/2, d] of 0.05, 0.1
    assert count(metrics.bad_responses) == 2
    assert count(metrics.retried) == 4
    assert len(http_receiver.received.log_records) == 2


async def test_grpc_to_an_ipv6_literal_endpoint() -> None:
    receiver = await GrpcReceiver(host="::1").start()
    try:
        assert receiver.endpoint.startswith("http://[::1]:")
        sink, _ = make_sink(receiver.endpoint, "grpc", timeout=2.0)
        export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1)]))
        done, _ = await asyncio.wait({export}, timeout=5)
        await sink.shutdown()
        result = await export
        await sink.close()
    finally:
        await receiver.stop()
    assert done and not result.deferred and not result.rejected
    assert len(receiver.received.log_records) == 1


async def test_partial_success_with_only_a_message_is_logged(
    http_receiver: HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The specification: rejected 0 with an error_message is a warning worth reading."""
    message = "attribute values longer than 4096 bytes were truncated"
    http_receiver.received.script.append(Answer("partial", rejected=0, message=message))
    sink, metrics = make_sink(http_receiver.endpoint, "http/protobuf")
    with caplog.at_level("WARNING", logger="flowscope.exporter.otlp"):
        result = await sink.export(Kind.FLOW, [flow(1)])
        await sink.export(Kind.FLOW, [flow(2)])  # a plain success: nothing more logged
    await sink.close()
    assert not result.rejected and not result.deferred and result.unconfirmed == 0
    assert count(metrics.partial_rejected) == 0
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].__dict__["error"] == message


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_record_with_an_integer_outside_int64_is_rejected_alone(
    protocol: str, grpc_receiver: GrpcReceiver, http_receiver: HttpReceiver
) -> None:
    """A u64 counter of 2**63 or more would arrive as a negative int_value: that record
    goes to the DLQ naming the key (as Elasticsearch refuses it); the rest is delivered."""
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    sink, _ = make_sink(receiver.endpoint, protocol)
    records = [flow(0), flow(1, **{"flow.bytes.delta": 2**64 - 1000}), flow(2)]
    result = await sink.export(Kind.FLOW, records)
    only_bad = await sink.export(Kind.FLOW, [records[1]])
    await sink.close()
    assert not result.deferred and list(result.rejected) == [1]
    assert "flow.bytes.delta" in result.rejected[1]
    assert list(only_bad.rejected) == [0] and not only_bad.deferred
    logs = receiver.received.log_records
    assert [lr.time_unix_nano for lr in logs] == [flow(0)["flow.end_ns"], flow(2)["flow.end_ns"]]
    assert len(receiver.received.attempts) == 1  # nothing sent for a batch of only bad ones
    assert all(
        kv.value.int_value >= 0
        for lr in logs
        for kv in lr.attributes
        if kv.key == "flow.bytes.delta"
    )


async def test_unencodable_records_are_rejected_not_deferred_at_shutdown() -> None:
    receiver = await GrpcReceiver().start()
    port = receiver.port
    await receiver.stop()
    sink, _ = make_sink(f"http://127.0.0.1:{port}", "grpc", timeout=0.5)
    records = [flow(0), flow(1, **{"flow.packets": 2**63})]
    export = asyncio.create_task(sink.export(Kind.FLOW, records))
    await asyncio.sleep(0.3)
    await sink.shutdown()
    result = await asyncio.wait_for(export, 5)
    await sink.close()
    assert result.deferred == {0} and list(result.rejected) == [1]


async def test_http_redirects_are_not_followed(http_receiver: HttpReceiver) -> None:
    """Before, aiohttp followed a 307 wherever it pointed (another origin, plaintext
    http) with the headers' tokens and the records. A redirect is not among the
    retryable answers: the batch is refused, the error naming where it pointed."""
    elsewhere = f"{http_receiver.endpoint}/v1/logs"

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(elsewhere)

    app = web.Application()
    app.router.add_post("/v1/logs", redirect)
    runner, port = await serve(app)
    sink, metrics = make_sink(
        f"http://127.0.0.1:{port}/v1/logs", "http/protobuf", headers="x-api-key=TOPSECRET"
    )
    try:
        result = await sink.export(Kind.FLOW, [flow(1), flow(2)])
    finally:
        await sink.close()
        await runner.cleanup()
    assert not http_receiver.received.attempts
    assert set(result.rejected) == {0, 1} and not result.deferred
    assert result.rejected[0].startswith("HTTP 307")
    assert elsewhere in result.rejected[0]
    assert count(metrics.retried) == 0
