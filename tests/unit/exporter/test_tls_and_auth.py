"""TLS (CA, mutual TLS) for both OTLP transports and Elasticsearch; Elasticsearch basic auth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from flowscope.exporter.ecs import EcsMapper
from flowscope.exporter.elasticsearch import ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.settings import ElasticsearchSettings
from flowscope.exporter.sink import ExportResult, Kind, Sink
from prometheus_client import CollectorRegistry

from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.otlp_receivers import GrpcReceiver, HttpReceiver, TlsFiles, make_tls
from tests.unit.exporter.sample import flow
from tests.unit.exporter.test_otlp_sink import make_sink


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, TlsFiles]:
    return make_tls(tmp_path_factory.mktemp("tls"))


async def export_or_give_up(sink: Sink, wait: float = 1.5) -> ExportResult:
    """Export one record; if it is still retrying after ``wait``, shut the sink down."""
    task = asyncio.create_task(sink.export(Kind.FLOW, [flow(1)]))
    done, _ = await asyncio.wait({task}, timeout=wait)
    if not done:
        await sink.shutdown()
    result = await asyncio.wait_for(task, 10)
    await sink.close()
    return result


async def test_otlp_http_over_tls_with_the_ca(tls: tuple[TlsFiles, TlsFiles]) -> None:
    server, _ = tls
    receiver = await HttpReceiver().start(tls=server)
    try:
        sink, _ = make_sink(receiver.endpoint, "http/protobuf", ca_file=str(server.ca))
        assert not (await export_or_give_up(sink)).deferred
        untrusting, _ = make_sink(receiver.endpoint, "http/protobuf")  # system roots only
        assert (await export_or_give_up(untrusting)).deferred == {0}
    finally:
        await receiver.stop()
    assert len(receiver.received.log_records) == 1


async def test_otlp_grpc_mutual_tls(tls: tuple[TlsFiles, TlsFiles]) -> None:
    server, client = tls
    receiver = await GrpcReceiver().start(tls=server)
    try:
        sink, _ = make_sink(
            receiver.endpoint, "grpc", ca_file=str(client.ca),
            client_cert=str(client.cert), client_key=str(client.key),
        )  # fmt: skip
        assert not (await export_or_give_up(sink)).deferred
        no_client_cert, _ = make_sink(receiver.endpoint, "grpc", ca_file=str(client.ca))
        assert (await export_or_give_up(no_client_cert)).deferred == {0}
    finally:
        await receiver.stop()
    assert len(receiver.received.log_records) == 1


async def test_otlp_an_upper_case_https_scheme_is_tls_verified(
    tls: tuple[TlsFiles, TlsFiles],
) -> None:
    """Schemes are case-insensitive. Before, ``HTTPS://`` was taken for plaintext: over
    HTTP the collector's certificate was not checked (an untrusted one was accepted),
    gRPC used no TLS at all, and TLS files for it were refused as set for plaintext."""
    server, client = tls
    receiver = await HttpReceiver().start(tls=server)
    try:
        endpoint = receiver.endpoint.replace("https://", "HTTPS://")
        untrusting, _ = make_sink(endpoint, "http/protobuf")  # system roots only
        assert (await export_or_give_up(untrusting)).deferred == {0}
        trusting, _ = make_sink(endpoint, "http/protobuf", ca_file=str(server.ca))
        assert not (await export_or_give_up(trusting)).deferred
    finally:
        await receiver.stop()
    assert len(receiver.received.log_records) == 1
    grpc_receiver = await GrpcReceiver().start(tls=server)
    try:
        sink, _ = make_sink(
            grpc_receiver.endpoint.replace("https://", "HTTPS://"), "grpc",
            ca_file=str(client.ca), client_cert=str(client.cert), client_key=str(client.key),
        )  # fmt: skip
        assert not (await export_or_give_up(sink)).deferred
    finally:
        await grpc_receiver.stop()
    assert len(grpc_receiver.received.log_records) == 1


def es_sink(url: str, **settings: object) -> ElasticsearchSink:
    metrics = ExporterMetrics.create(CollectorRegistry())
    return ElasticsearchSink(
        ElasticsearchSettings(url=url, **settings),  # type: ignore[arg-type]
        EcsMapper(),
        metrics,
        backoff=(0.05, 0.2),
    )


async def test_elasticsearch_https_with_the_ca_and_basic_auth(
    tls: tuple[TlsFiles, TlsFiles], tmp_path: Path
) -> None:
    server, _ = tls
    es = await FakeElasticsearch().start(ssl_context=server.server_context())
    es.basic_auth = ("flowscope", "s3cret")
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    try:
        sink = es_sink(
            es.url, ca_file=str(server.ca), username="flowscope", password_file=str(password)
        )
        await sink.start()
        assert not (await export_or_give_up(sink)).deferred
        wrong = es_sink(es.url, ca_file=str(server.ca), username="flowscope", password="nope")
        with pytest.raises(Exception, match="401"):
            await wrong.start()
        assert (await export_or_give_up(wrong)).deferred == {0}  # retried, never dropped
        untrusting = es_sink(es.url, username="flowscope", password="s3cret")
        assert (await export_or_give_up(untrusting)).deferred == {0}
    finally:
        await es.stop()
    assert len(es.stored("logs-flowscope.flows-default")) == 1


async def test_elasticsearch_mutual_tls(tls: tuple[TlsFiles, TlsFiles]) -> None:
    server, client = tls
    es = await FakeElasticsearch().start(
        ssl_context=server.server_context(require_client_cert=True)
    )
    try:
        sink = es_sink(
            es.url, ca_file=str(client.ca), client_cert=str(client.cert), client_key=str(client.key)
        )
        await sink.start()
        assert not (await export_or_give_up(sink)).deferred
        no_client_cert = es_sink(es.url, ca_file=str(client.ca))
        assert (await export_or_give_up(no_client_cert)).deferred == {0}  # retried, not dropped
    finally:
        await es.stop()
    assert len(es.stored("logs-flowscope.flows-default")) == 1
