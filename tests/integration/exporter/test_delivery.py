"""The exporter end to end: real nats-server, real process, real peers over loopback.

- No loss while Elasticsearch is down (stdout and OTLP keep flowing meanwhile), and
  exactly once in Elasticsearch by ``_id`` after it comes back.
- Restarting the exporter mid-stream (SIGKILL and SIGTERM) loses and doubles nothing.
- stdout piped into ``head -n 3`` ends the exporter cleanly.
- Bad messages and records Elasticsearch refuses go to ``flowscope.dlq.exporter``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from flowscope.core import codec, subjects
from flowscope.exporter.ecs import EcsMapper, document_id
from flowscope.exporter.sink import Kind
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.integration.exporter.harness import (
    REPO,
    Exporter,
    fresh_streams,
    metric,
    publish_dns,
    publish_flows,
)
from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.nats_server import NatsServer
from tests.support.otlp_receivers import GrpcReceiver
from tests.support.waiting import eventually
from tests.unit.exporter.sample import dns, flow

FLOWS = "logs-flowscope.flows-default"
DNS = "logs-flowscope.dns-default"


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


@pytest.fixture
async def es() -> AsyncIterator[FakeElasticsearch]:
    server = await FakeElasticsearch().start()
    yield server
    await server.stop()


@pytest.fixture
async def otlp() -> AsyncIterator[GrpcReceiver]:
    receiver = await GrpcReceiver().start()
    yield receiver
    await receiver.stop()


def all_sinks_env(nats_url: str, es: FakeElasticsearch, otlp: GrpcReceiver) -> dict[str, str]:
    return {
        "FLOWSCOPE_NATS_URL": nats_url,
        "FLOWSCOPE_SINKS": "stdout,otlp,elasticsearch",
        "FLOWSCOPE_CLUSTER_NAME": "it",
        "FLOWSCOPE_OTLP_ENDPOINT": otlp.endpoint,
        "FLOWSCOPE_OTLP_PROTOCOL": "grpc",
        "FLOWSCOPE_ELASTICSEARCH_URL": es.url,
    }


async def test_elasticsearch_outage_loses_nothing_and_holds_back_no_other_sink(
    nc: NATS, nats_srv: NatsServer, streams: None, es: FakeElasticsearch, otlp: GrpcReceiver,
    tmp_path: Path,
) -> None:  # fmt: skip
    exporter = Exporter(tmp_path, all_sinks_env(nats_srv.url, es, otlp)).start()
    try:
        first = [flow(i) for i in range(200)]
        dns_records = [dns(i) for i in range(10)]
        await publish_flows(nc, first)
        await publish_dns(nc, dns_records)
        await eventually(lambda: len(es.stored(FLOWS)) == 200, what="first flows in ES")
        await eventually(lambda: len(es.stored(DNS)) == 10, what="DNS in ES")

        await es.stop()
        second = [flow(i) for i in range(200, 400)]
        await publish_flows(nc, second)
        # stdout and OTLP deliver the new records while Elasticsearch is down.
        await eventually(lambda: len(exporter.stdout_records()) == 410, what="stdout during outage")
        await eventually(lambda: len(otlp.received.log_records) == 410, what="OTLP during outage")
        # Stay down longer than ack_wait (3 s): the held messages must be kept alive
        # (in_progress), not redelivered behind the exporter's back.
        await asyncio.sleep(4.0)
        text = await exporter.metrics()
        lag = "flowscope_exporter_consumer_lag"
        assert metric(text, lag, "elasticsearch", "FLOWSCOPE_FLOWS") == 10  # messages held
        assert metric(text, lag, "stdout", "FLOWSCOPE_FLOWS") == 0
        await es.start(es.port)
        await eventually(lambda: len(es.stored(FLOWS)) == 400, what="all flows in ES")

        mapper = EcsMapper("it")
        records = first + second
        assert es.stored(FLOWS) == {document_id(Kind.FLOW, r): mapper.flow(r) for r in records}
        assert es.stored(DNS) == {document_id(Kind.DNS, r): mapper.dns(r) for r in dns_records}
        assert set(es.creates.values()) == {1}
        assert es.item_statuses[409] == 0  # nothing was delivered twice
        assert sorted(orjson.dumps(r) for r in exporter.stdout_records()) == sorted(
            orjson.dumps(r) for r in records + dns_records
        )
        assert len(otlp.received.log_records) == 410

        text = await exporter.metrics()
        assert metric(text, "flowscope_exporter_records_exported_total", "elasticsearch") == 410
        assert metric(text, "flowscope_exporter_records_exported_total", "stdout") == 410
        assert metric(text, "flowscope_exporter_records_exported_total", "otlp") == 410
        assert metric(text, "flowscope_exporter_records_retried_total", "elasticsearch") > 0

        async def caught_up() -> bool:
            text = await exporter.metrics()
            return metric(text, lag, "elasticsearch", "FLOWSCOPE_FLOWS") == 0

        await eventually(caught_up, what="the Elasticsearch consumer's lag back to 0")
    finally:
        assert await exporter.stop() == 0, exporter.stderr()
    assert "Traceback" not in exporter.stderr()


async def test_restart_mid_stream_loses_and_doubles_nothing(
    nc: NATS, nats_srv: NatsServer, streams: None, es: FakeElasticsearch, tmp_path: Path
) -> None:
    env = {
        "FLOWSCOPE_NATS_URL": nats_srv.url,
        "FLOWSCOPE_SINKS": "elasticsearch",
        "FLOWSCOPE_ELASTICSEARCH_URL": es.url,
    }
    records = [flow(i) for i in range(600)]

    async def publish() -> None:
        for i in range(0, len(records), 10):
            await publish_flows(nc, records[i : i + 10], per_message=10)
            await asyncio.sleep(0.02)

    exporter = Exporter(tmp_path, env).start()
    publisher = asyncio.create_task(publish())
    await eventually(lambda: len(es.stored(FLOWS)) > 50, what="first records")
    await exporter.stop(signal.SIGKILL)  # no drain: unacked messages come back after ack_wait
    before = len(es.stored(FLOWS))
    exporter.start()
    await exporter.ready()
    more = min(before + 50, len(records))
    await eventually(lambda: len(es.stored(FLOWS)) >= more, what="more records")
    assert await exporter.stop(signal.SIGTERM) == 0  # a drain: in-flight batches finish or nak
    exporter.start()
    await publisher
    try:
        await eventually(lambda: len(es.stored(FLOWS)) == 600, within=60, what="every record")
        await asyncio.sleep(4)  # past ack_wait: any redelivery would have been attempted
        assert len(es.stored(FLOWS)) == 600
        assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, r) for r in records}
        assert set(es.creates.values()) == {1}  # nothing stored twice
    finally:
        assert await exporter.stop() == 0, exporter.stderr()


def run_into_head(nats_url: str) -> tuple[int, str, bytes]:
    """``flowscope exporter | head -n 3``: (exporter status, its stderr, head's output)."""
    env = {"FLOWSCOPE_NATS_URL": nats_url, "FLOWSCOPE_SINKS": "stdout", "PYTHONPATH": str(REPO),
           "FLOWSCOPE_HTTP_ADDRESS": "", "FLOWSCOPE_BATCH_MAX_RECORDS": "10"}  # fmt: skip
    exporter = subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli", "exporter"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert exporter.stdout is not None and exporter.stderr is not None
    head = subprocess.Popen(["head", "-n", "3"], stdin=exporter.stdout, stdout=subprocess.PIPE)
    exporter.stdout.close()  # only head holds the read end now
    out, _ = head.communicate(timeout=60)
    try:
        _, stderr = exporter.communicate(timeout=60)
    finally:
        if exporter.poll() is None:
            exporter.kill()
    return exporter.returncode, stderr.decode(), out


async def test_stdout_into_head_ends_cleanly(nc: NATS, nats_srv: NatsServer, streams: None) -> None:
    await publish_flows(nc, [flow(i) for i in range(100)])
    status, stderr, out = await asyncio.to_thread(run_into_head, nats_srv.url)
    assert status == 0, stderr
    assert "Traceback" not in stderr
    lines = out.splitlines()
    assert len(lines) == 3
    assert [orjson.loads(line) for line in lines] == [flow(i) for i in range(3)]


async def test_bad_input_is_dead_lettered_and_the_rest_delivered(
    nc: NATS, nats_srv: NatsServer, streams: None, es: FakeElasticsearch, tmp_path: Path
) -> None:
    dead: list[tuple[dict[str, str], bytes]] = []

    async def on_dead(msg: object) -> None:
        dead.append((dict(msg.headers or {}), msg.data))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.dlq("exporter"), cb=on_dead)
    env = {
        "FLOWSCOPE_NATS_URL": nats_srv.url,
        "FLOWSCOPE_SINKS": "elasticsearch",
        "FLOWSCOPE_ELASTICSEARCH_URL": es.url,
    }
    exporter = Exporter(tmp_path, env).start()
    try:
        js = nc.jetstream()
        subject = subjects.flows("shop", "payments")
        await js.publish(subject, b"{not json\n", headers={codec.SCHEMA_HEADER: "flow/1"})
        await js.publish(subject, b'{"a":1}\n', headers={codec.SCHEMA_HEADER: "flow/99"})
        missing_key = {k: v for k, v in flow(1).items() if k != "flow.end_ns"}
        not_an_ip = flow(2, **{"source.address": "not-an-ip"})
        batch = codec.encode(codec.FLOW, [flow(0), missing_key, not_an_ip, flow(3)])
        await js.publish(subject, batch.body, headers=batch.headers)
        await eventually(lambda: len(es.stored(FLOWS)) == 2, what="good records stored")
        await eventually(lambda: len(dead) == 4, what="four dead letters")
        reasons = sorted(h[subjects.DLQ_REASON_HEADER] for h, _ in dead)
        assert any("malformed" in r for r in reasons)
        assert any("schema-mismatch" in r for r in reasons)
        assert any("missing key 'flow.end_ns'" in r for r in reasons)
        assert any("failed to parse field [source.ip]" in r for r in reasons)
        assert all(h[subjects.DLQ_SUBJECT_HEADER] == subject for h, _ in dead)
        refused = next(body for h, body in dead if "source.ip" in h[subjects.DLQ_REASON_HEADER])
        assert codec.decode_body(refused) == [not_an_ip]
        assert set(es.stored(FLOWS)) == {document_id(Kind.FLOW, flow(i)) for i in (0, 3)}

        async def all_acked() -> bool:
            info = await js.consumer_info(subjects.STREAM_FLOWS, "flowscope-exporter-elasticsearch")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acked, what="everything acked")
        text = await exporter.metrics()
        assert metric(text, "flowscope_exporter_bad_messages_total", "elasticsearch") == 2
        assert metric(text, "flowscope_exporter_records_dead_lettered_total", "elasticsearch") == 2
    finally:
        assert await exporter.stop() == 0, exporter.stderr()


async def test_a_bad_message_is_dead_lettered_once_for_all_sinks(
    nc: NATS, nats_srv: NatsServer, streams: None, es: FakeElasticsearch, otlp: GrpcReceiver,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Every sink's consumer meets the bad message and the invalid record and
    dead-letters them; the DLQ stream stores one copy of each."""
    exporter = Exporter(tmp_path, all_sinks_env(nats_srv.url, es, otlp)).start()
    try:
        js = nc.jetstream()
        subject = subjects.flows("shop", "payments")
        await js.publish(subject, b"{not json\n", headers={codec.SCHEMA_HEADER: "flow/1"})
        missing_key = {k: v for k, v in flow(1).items() if k != "flow.end_ns"}
        batch = codec.encode(codec.FLOW, [flow(0), missing_key])
        await js.publish(subject, batch.body, headers=batch.headers)

        async def all_acked() -> bool:
            for sink in ("stdout", "otlp", "elasticsearch"):
                name = f"flowscope-exporter-{sink}"
                try:
                    info = await js.consumer_info(subjects.STREAM_FLOWS, name)
                except NotFoundError:
                    return False  # that sink has not started yet
                if info.num_ack_pending or info.num_pending:
                    return False
            return True

        await eventually(all_acked, what="every sink done")
        info = await js.stream_info(subjects.STREAM_DLQ)
        assert info.state.messages == 2
        first = await js.get_msg(subjects.STREAM_DLQ, 1)
        second = await js.get_msg(subjects.STREAM_DLQ, 2)
        assert first.data == b"{not json\n"
        assert second.data is not None
        assert codec.decode_body(second.data) == [missing_key]
        text = await exporter.metrics()
        sinks = ("stdout", "otlp", "elasticsearch")
        assert [metric(text, "flowscope_exporter_bad_messages_total", s) for s in sinks] == [1] * 3
        stored = sum(
            metric(text, "flowscope_exporter_records_dead_lettered_total", s) for s in sinks
        )
        assert stored == 1  # counted by the sink whose copy was stored
        assert len(es.stored(FLOWS)) == 1
    finally:
        assert await exporter.stop() == 0, exporter.stderr()


async def test_stdout_writes_whole_messages_as_they_came_and_the_rest_encoded(
    nc: NATS, nats_srv: NatsServer, streams: None, tmp_path: Path
) -> None:
    """A message whose records are all valid reaches stdout byte for byte; one that lost
    a record to the DLQ has its other records encoded again, the lost one left out."""
    dead: list[bytes] = []

    async def on_dead(msg: object) -> None:
        dead.append(msg.data)  # type: ignore[attr-defined]

    await nc.subscribe(subjects.dlq("exporter"), cb=on_dead)
    exporter = Exporter(tmp_path, {"FLOWSCOPE_NATS_URL": nats_srv.url, "FLOWSCOPE_SINKS": "stdout"})
    exporter.start()
    try:
        js = nc.jetstream()
        subject = subjects.flows("shop", "payments")
        # valid NDJSON as no encoder here writes it: spaces, an escaped character
        spaced = orjson.dumps(flow(0)).replace(b'":', b'": ').replace(b"node-a", b"node-\\u0061")
        whole = spaced + b"\n" + orjson.dumps(flow(1)) + b"\n"
        await js.publish(subject, whole, headers={codec.SCHEMA_HEADER: "flow/1"})
        missing_key = {k: v for k, v in flow(3).items() if k != "flow.end_ns"}
        partial = codec.encode(codec.FLOW, [flow(2), missing_key, flow(4)])
        await js.publish(subject, partial.body, headers=partial.headers)
        await eventually(lambda: len(exporter.stdout_records()) == 4, what="four records out")
        await eventually(lambda: len(dead) == 1, what="the invalid record dead-lettered")
        out = exporter.stdout_path.read_bytes()
        assert out == whole + orjson.dumps(flow(2)) + b"\n" + orjson.dumps(flow(4)) + b"\n"
        assert exporter.stdout_records()[0] == flow(0)
        assert codec.decode_body(dead[0]) == [missing_key]
    finally:
        assert await exporter.stop() == 0, exporter.stderr()
