"""A ``_bulk`` over Elasticsearch's ``http.max_content_length`` (100 MB) is answered 413.

Sent again as it was, it was refused again for ever: the sink retried it as if
Elasticsearch were unavailable and its lane made no progress. Now a batch is split in
halves and a record too large on its own is dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from flowscope.exporter.ecs import EcsMapper, document_id
from flowscope.exporter.elasticsearch import ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.settings import ElasticsearchSettings
from flowscope.exporter.sink import ExportResult, Kind, Record
from prometheus_client import CollectorRegistry

from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.unit.exporter.sample import flow

FLOWS = "logs-flowscope.flows-default"
MB = 1 << 20


@pytest.fixture
async def es() -> AsyncIterator[FakeElasticsearch]:
    server = await FakeElasticsearch().start()
    yield server
    await server.stop()


async def export(url: str, records: list[Record]) -> ExportResult:
    """One export; stopped (its records deferred) if it still retries after 20 s."""
    metrics = ExporterMetrics.create(CollectorRegistry())
    sink = ElasticsearchSink(
        ElasticsearchSettings(url=url), EcsMapper("c1"), metrics, backoff=(0.05, 0.2)
    )
    task = asyncio.create_task(sink.export(Kind.FLOW, records))
    done, _ = await asyncio.wait({task}, timeout=20)
    if not done:
        await sink.shutdown()
    try:
        return await task
    finally:
        await sink.close()


def blob(i: int, size: int) -> Record:
    return {**flow(i), "x.blob": "a" * size}


async def test_a_record_over_the_request_limit_is_dead_lettered_alone(
    es: FakeElasticsearch,
) -> None:
    records = [flow(0), blob(1, 101 * MB), flow(2)]
    result = await export(es.url, records)
    assert not result.deferred
    assert list(result.rejected) == [1]
    assert result.rejected[1].startswith("413 document too large")
    assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, records[i]) for i in (0, 2)}


async def test_a_batch_over_the_request_limit_is_stored_in_parts(es: FakeElasticsearch) -> None:
    records = [blob(0, 51 * MB), flow(1), blob(2, 51 * MB)]
    result = await export(es.url, records)
    assert not result.deferred and not result.rejected
    assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, r) for r in records}
