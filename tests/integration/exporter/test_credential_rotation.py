"""The exporter process picks up a fixed Elasticsearch API key file without a restart.

Real nats-server, real ``flowscope exporter`` process, fake Elasticsearch over HTTP on
loopback: records published while the key is wrong are refused (401) and retried, and
once the mounted file holds the right key every record is stored, exactly once.
"""

from __future__ import annotations

from pathlib import Path

from flowscope.exporter.ecs import EcsMapper, document_id
from flowscope.exporter.sink import Kind
from nats.aio.client import Client as NATS

from tests.integration.exporter.harness import Exporter, fresh_streams, publish_flows
from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow

FLOWS = "logs-flowscope.flows-default"


async def test_a_fixed_api_key_file_delivers_what_was_refused(
    nc: NATS, nats_srv: NatsServer, tmp_path: Path
) -> None:
    await fresh_streams(nc, nats_srv.url)
    es = await FakeElasticsearch(api_key="cmlnaHQ=").start()
    key_file = tmp_path / "api-key"
    key_file.write_text("d3Jvbmc=\n")
    exporter = Exporter(tmp_path, {
        "FLOWSCOPE_NATS_URL": nats_srv.url,
        "FLOWSCOPE_SINKS": "elasticsearch",
        "FLOWSCOPE_CLUSTER_NAME": "it",
        "FLOWSCOPE_ELASTICSEARCH_URL": es.url,
        "FLOWSCOPE_ELASTICSEARCH_API_KEY_FILE": str(key_file),
    }).start()  # fmt: skip
    try:
        records = [flow(i) for i in range(100)]
        await publish_flows(nc, records)
        await eventually(lambda: es.refused >= 3, what="requests refused with the wrong key")
        assert es.stored(FLOWS) == {}
        key_file.write_text("cmlnaHQ=\n")
        await eventually(lambda: len(es.stored(FLOWS)) == 100, what="every record stored")
    finally:
        assert await exporter.stop() == 0, exporter.stderr()
        await es.stop()
    mapper = EcsMapper("it")
    assert es.stored(FLOWS) == {document_id(Kind.FLOW, r): mapper.flow(r) for r in records}
    assert set(es.creates.values()) == {1}
    assert "d3Jvbmc=" not in exporter.stderr()  # the key is never logged
