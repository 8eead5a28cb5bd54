"""The Elasticsearch sink against a faithful fake ``_bulk`` endpoint over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from flowscope.core import config
from flowscope.exporter.ecs import EcsMapper, document_id
from flowscope.exporter.elasticsearch import BackendError, Buffers, ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.settings import ElasticsearchSettings, Settings
from flowscope.exporter.sink import ExportResult, Kind
from prometheus_client import CollectorRegistry

from tests.support.fake_elasticsearch import FakeElasticsearch, filtered
from tests.unit.exporter.sample import dns, flow

FLOWS = "logs-flowscope.flows-default"
Handler = Callable[[web.Request], Awaitable[web.Response]]


@pytest.fixture
async def es() -> AsyncIterator[FakeElasticsearch]:
    server = await FakeElasticsearch().start()
    yield server
    await server.stop()


def make_sink(url: str, **settings: object) -> tuple[ElasticsearchSink, ExporterMetrics]:
    metrics = ExporterMetrics.create(CollectorRegistry())
    es_settings = ElasticsearchSettings(url=url, **settings)  # type: ignore[arg-type]
    return ElasticsearchSink(es_settings, EcsMapper("c1"), metrics, backoff=(0.05, 0.2)), metrics


def count(metric: object) -> float:
    return metric.labels("elasticsearch")._value.get()  # type: ignore[attr-defined]


async def test_start_installs_the_index_template(es: FakeElasticsearch) -> None:
    sink, _ = make_sink(es.url)
    await sink.start()
    await sink.close()
    template = es.templates["flowscope"]
    assert template["index_patterns"] == [FLOWS, "logs-flowscope.dns-default"]
    assert template["priority"] == 200
    assert template["data_stream"] == {}


async def test_start_without_template_permission_skips_it(es: FakeElasticsearch) -> None:
    sink, _ = make_sink(es.url, install_template=False)
    await sink.start()
    await sink.close()
    assert es.templates == {}


async def test_documents_stored_are_exactly_the_records(es: FakeElasticsearch) -> None:
    sink, _ = make_sink(es.url)
    records = [flow(i) for i in range(20)]
    result = await sink.export(Kind.FLOW, records)
    result_dns = await sink.export(Kind.DNS, [dns(0)])
    await sink.close()
    assert not result.rejected and not result.deferred and not result_dns.deferred
    mapper = EcsMapper("c1")
    stored = es.stored(FLOWS)
    assert stored == {document_id(Kind.FLOW, r): mapper.flow(r) for r in records}
    assert es.stored("logs-flowscope.dns-default") == {
        document_id(Kind.DNS, dns(0)): mapper.dns(dns(0))
    }


async def test_concurrent_and_shrinking_batches_store_exactly_their_records(
    es: FakeElasticsearch,
) -> None:
    """Bodies are written into reused buffers: batches under way at once each get their
    own, and a smaller batch after a larger one sends only its own bytes."""
    sink, _ = make_sink(es.url)
    batches = [[flow(i) for i in range(b * 100, b * 100 + 50 - 10 * b)] for b in range(4)]
    await asyncio.gather(*(sink.export(Kind.FLOW, batch) for batch in batches[:2]))
    for batch in batches[2:]:
        await sink.export(Kind.FLOW, batch)
    await sink.close()
    mapper = EcsMapper("c1")
    records = [r for batch in batches for r in batch]
    assert es.stored(FLOWS) == {document_id(Kind.FLOW, r): mapper.flow(r) for r in records}


def test_a_buffer_is_reused_only_when_nothing_reads_it() -> None:
    buffers = Buffers()
    first = buffers.take()
    first.write(b"first body")
    reader = first.getbuffer()
    buffers.give(first)
    second = buffers.take()
    assert second is not first  # still read through `reader`: not overwritten
    reader.release()
    buffers.give(second)
    assert buffers.take() is second
    assert second.tell() == 0


async def test_redelivery_is_idempotent(es: FakeElasticsearch) -> None:
    sink, metrics = make_sink(es.url)
    records = [flow(i) for i in range(10)]
    await sink.export(Kind.FLOW, records[:6])
    result = await sink.export(Kind.FLOW, records)  # the first six again
    await sink.close()
    assert not result.rejected and not result.deferred
    assert len(es.stored(FLOWS)) == 10
    assert set(es.creates.values()) == {1}
    assert count(metrics.already_stored) == 6
    assert result.unconfirmed == 6  # acked, but not counted as exported again


async def test_429_and_5xx_items_are_retried_alone_400_is_rejected(es: FakeElasticsearch) -> None:
    es.inject(429, 503, 400)  # the first three items of the first request
    sink, metrics = make_sink(es.url)
    records = [flow(i) for i in range(5)]
    result = await sink.export(Kind.FLOW, records)
    await sink.close()
    assert not result.deferred
    assert list(result.rejected) == [2]
    assert result.rejected[2].startswith("400 document_parsing_exception")
    assert es.bulk_requests == 2  # the retry carried only the two failed items
    assert count(metrics.retried) == 2
    assert set(es.stored(FLOWS)) == {
        document_id(Kind.FLOW, r) for i, r in enumerate(records) if i != 2
    }
    assert set(es.creates.values()) == {1}


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_items_refused_for_the_setup_are_retried_not_dead_lettered(
    status: int, es: FakeElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing index privilege (403 security_exception) or data stream (404
    index_not_found_exception) comes per item in a 200 answer: the records are fine and
    are stored once the setup is fixed; only the document's own errors go to the DLQ."""
    es.inject(status, status, 400)  # the setup is fixed after the first answer
    sink, metrics = make_sink(es.url)
    records = [flow(i) for i in range(4)]
    with caplog.at_level("WARNING", logger="flowscope.exporter.elasticsearch"):
        result = await sink.export(Kind.FLOW, records)
    await sink.close()
    assert not result.deferred
    assert list(result.rejected) == [2]
    assert es.bulk_requests == 2 and count(metrics.retried) == 2
    assert set(es.stored(FLOWS)) == {
        document_id(Kind.FLOW, r) for i, r in enumerate(records) if i != 2
    }
    assert any("for its setup" in r.getMessage() for r in caplog.records)


async def test_items_refused_for_the_setup_are_deferred_at_shutdown(
    es: FakeElasticsearch,
) -> None:
    es.inject(*[403] * 1000)  # the privilege stays missing
    sink, _ = make_sink(es.url)
    export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1), flow(2)]))
    await asyncio.sleep(0.3)
    await sink.shutdown()
    result = await asyncio.wait_for(export, 5)
    await sink.close()
    assert result.deferred == {0, 1} and not result.rejected
    assert not es.stored(FLOWS)


async def test_document_elasticsearch_refuses_is_rejected_with_its_reason(
    es: FakeElasticsearch,
) -> None:
    sink, _ = make_sink(es.url)
    await sink.start()  # the template maps source.ip as ip
    bad = flow(1, **{"source.address": "not-an-address"})
    result = await sink.export(Kind.FLOW, [flow(0), bad])
    await sink.close()
    assert list(result.rejected) == [1]
    assert "failed to parse field [source.ip] of type [ip]" in result.rejected[1]
    assert list(es.stored(FLOWS)) == [document_id(Kind.FLOW, flow(0))]


async def test_down_elasticsearch_is_retried_until_it_returns(es: FakeElasticsearch) -> None:
    port = es.port
    await es.stop()
    sink, metrics = make_sink(f"http://127.0.0.1:{port}")
    export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1), flow(2)]))
    await asyncio.sleep(0.6)
    assert not export.done()
    await es.start(port)
    result = await asyncio.wait_for(export, 10)
    await sink.close()
    assert not result.deferred and not result.rejected
    assert len(es.stored(FLOWS)) == 2
    assert count(metrics.retried) >= 2


async def test_shutdown_during_outage_defers(es: FakeElasticsearch) -> None:
    port = es.port
    await es.stop()
    sink, _ = make_sink(f"http://127.0.0.1:{port}")
    export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1)]))
    await asyncio.sleep(0.3)
    await sink.shutdown()
    result = await asyncio.wait_for(export, 5)
    await sink.close()
    assert result.deferred == {0}


async def test_api_key_is_sent(es: FakeElasticsearch, tmp_path: Path) -> None:
    es.api_key = "c2VjcmV0"
    sink, _ = make_sink(es.url, api_key="c2VjcmV0")
    await sink.start()
    assert not (await sink.export(Kind.FLOW, [flow(1)])).deferred
    await sink.close()
    key_file = tmp_path / "api-key"
    key_file.write_text("c2VjcmV0\n")
    from_file, _ = make_sink(es.url, api_key="bm9wZQ==", api_key_file=str(key_file))
    await from_file.start()  # the file wins over the (wrong) setting
    await from_file.close()
    wrong, _ = make_sink(es.url, api_key="bm9wZQ==")
    with pytest.raises(Exception, match="401"):
        await wrong.start()
    await wrong.close()


async def test_api_key_from_the_environment_with_a_final_newline_is_sent(
    es: FakeElasticsearch,
) -> None:
    """As a Secret made with ``kubectl create secret --from-file`` reaches the variable;
    before, aiohttp refused every request ("Forbidden control character")."""
    es.api_key = "c2VjcmV0"
    env = {"FLOWSCOPE_ELASTICSEARCH_URL": es.url, "FLOWSCOPE_ELASTICSEARCH_API_KEY": "c2VjcmV0\n"}
    settings = config.load(Settings, {}, env).elasticsearch
    sink = ElasticsearchSink(settings, EcsMapper("c1"), ExporterMetrics.create(CollectorRegistry()))
    try:
        await sink.start()
        result = await sink.export(Kind.FLOW, [flow(1)])
    finally:
        await sink.close()
    assert not result.deferred and not result.rejected
    assert len(es.stored(FLOWS)) == 1
    assert es.refused == 0


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """A hand-written peer on a free loopback port; clean up with ``runner.cleanup()``."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def bulk_answer(answer: dict[str, Any]) -> web.Response:
    """A ``_bulk`` answer as Elasticsearch writes it: compact, with its product header."""
    return web.Response(
        body=orjson.dumps(answer),
        content_type="application/json",
        headers={"X-Elastic-Product": "Elasticsearch"},
    )


async def export_to_bulk(bulk: Handler, records: list[dict[str, Any]]) -> ExportResult:
    """Export ``records`` with a sink whose ``_bulk`` requests ``bulk`` answers."""
    app = web.Application()
    app.router.add_post("/_bulk", bulk)
    runner, port = await serve(app)
    sink, _ = make_sink(f"http://127.0.0.1:{port}")
    try:
        return await sink.export(Kind.FLOW, records)
    finally:
        await sink.close()
        await runner.cleanup()


async def test_a_peer_that_is_not_elasticsearch_is_refused() -> None:
    async def info(_: web.Request) -> web.Response:
        return web.json_response({"version": {"number": "8.0.0"}})  # no X-Elastic-Product

    app = web.Application()
    app.router.add_get("/", info)
    runner, port = await serve(app)
    sink, _ = make_sink(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(Exception, match="not Elasticsearch"):
            await sink.start()
    finally:
        await sink.close()
        await runner.cleanup()


async def test_an_answer_with_another_item_count_is_retried_whole() -> None:
    """All-stored answers are counted, not decoded: a count that does not match the
    request (here the first answer names one item for three) sends the batch again."""
    sent: list[int] = []

    async def bulk(request: web.Request) -> web.Response:
        sent.append((await request.read()).count(b"\n") // 2)
        items = 1 if len(sent) == 1 else sent[-1]
        return bulk_answer({"errors": False, "items": [{"create": {"status": 201}}] * items})

    result = await export_to_bulk(bulk, [flow(i) for i in range(3)])
    assert sent == [3, 3]
    assert not result.rejected and not result.deferred


class PickyMapper(EcsMapper):
    """A mapper (the sink's seam) that cannot map records of one observer."""

    def flow_entry(self, record: dict[str, Any]) -> tuple[bytes, bytes]:
        if record["observer.node.name"] == "unmappable":
            raise ValueError("no mapping for this record")
        return super().flow_entry(record)


async def test_record_the_mapping_cannot_handle_is_rejected_alone(es: FakeElasticsearch) -> None:
    metrics = ExporterMetrics.create(CollectorRegistry())
    sink = ElasticsearchSink(ElasticsearchSettings(url=es.url), PickyMapper(), metrics)
    odd = flow(1, **{"observer.node.name": "unmappable"})
    result = await sink.export(Kind.FLOW, [flow(0), odd, flow(2)])
    await sink.close()
    assert list(result.rejected) == [1]
    assert result.rejected[1] == "cannot map to ECS: ValueError: no mapping for this record"
    assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, flow(i)) for i in (0, 2)}


def test_fake_filters_responses_as_elasticsearch_does() -> None:
    """The fake's filter_path (which the sink's _bulk uses) keeps what a pattern reaches."""
    answer = {
        "took": 3,
        "errors": True,
        "items": [
            {"create": {"_id": "a", "status": 201, "result": "created"}},
            {"create": {"_id": "b", "status": 429, "error": {"type": "t", "reason": "r"}}},
        ],
    }
    patterns = [p.split(".") for p in ["errors", "items.*.status", "items.*.error"]]
    assert filtered(answer, patterns) == {
        "errors": True,
        "items": [
            {"create": {"status": 201}},
            {"create": {"status": 429, "error": {"type": "t", "reason": "r"}}},
        ],
    }
    assert filtered(answer, [["nothing"]]) is None


async def test_redirects_are_not_followed(es: FakeElasticsearch) -> None:
    """Before, a 307 to another origin (here plaintext, another port) got the records:
    a redirect is an unavailable backend naming where it points, retried like one."""
    elsewhere = es.url

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(elsewhere + request.path_qs)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", redirect)
    runner, port = await serve(app)
    sink, _ = make_sink(f"http://127.0.0.1:{port}", api_key="c2VjcmV0")
    try:
        with pytest.raises(BackendError, match=f"redirect.*{elsewhere}/"):
            await sink.start()
        export = asyncio.create_task(sink.export(Kind.FLOW, [flow(1)]))
        await asyncio.sleep(0.3)
        await sink.shutdown()
        result = await asyncio.wait_for(export, 5)
    finally:
        await sink.close()
        await runner.cleanup()
    assert result.deferred == {0}
    assert es.bulk_requests == 0 and not es.templates
