"""Which exporters share a sink's durable consumer: ``consumer.durable`` decides.

Replicas of one exporter share ``<durable>-<sink>`` and split the records (each record
once across them); two exporters with different names (two releases on one NATS, a
debugging exporter beside the deployment) each get every record. Before the setting,
every exporter used ``flowscope-exporter-<sink>``: a second exporter silently took part
of the first one's records. A name JetStream would refuse stops the exporter at
start-up (exit 2, one line naming the setting) instead of a lane retrying for ever.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from flowscope.core import subjects
from nats.aio.client import Client as NATS

from tests.integration.exporter.harness import Exporter, fresh_streams, publish_dns, publish_flows
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import dns, flow

FLOWS = [flow(i) for i in range(300)]
DNS = [dns(i) for i in range(10)]


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


def exporters(tmp: Path, url: str, *durables: str | None) -> list[Exporter]:
    """One stdout exporter per entry (None: the default name), each in its own dir."""
    started = []
    for i, durable in enumerate(durables):
        env = {"FLOWSCOPE_NATS_URL": url, "FLOWSCOPE_SINKS": "stdout"}
        if durable is not None:
            env["FLOWSCOPE_CONSUMER_DURABLE"] = durable
        (tmp / str(i)).mkdir()
        started.append(Exporter(tmp / str(i), env).start())
    return started


def lines(records: list[dict[str, object]]) -> Counter[bytes]:
    return Counter(orjson.dumps(r) for r in records)


async def run_two(nc: NATS, pair: list[Exporter], done: Callable[[], bool]) -> None:
    """Both ready (subscribed), then every record published, until ``done()``."""
    try:
        await asyncio.gather(*(e.ready() for e in pair))
        await publish_flows(nc, FLOWS, per_message=10)
        await publish_dns(nc, DNS)
        await eventually(done, what="records on stdout")
        await asyncio.sleep(1.0)  # anything more (a double) would arrive by now
    finally:
        codes = [await e.stop() for e in pair]
    assert codes == [0, 0], [e.stderr() for e in pair]


async def test_exporters_with_different_durables_each_export_every_record(
    nc: NATS, nats_srv: NatsServer, streams: None, tmp_path: Path
) -> None:
    pair = exporters(tmp_path, nats_srv.url, "release-a", "release-b")
    await run_two(
        nc, pair, lambda: all(len(e.stdout_records()) >= len(FLOWS) + len(DNS) for e in pair)
    )
    for exporter in pair:
        assert lines(exporter.stdout_records()) == lines(FLOWS + DNS)
    for stream in (subjects.STREAM_FLOWS, subjects.STREAM_DNS):
        consumers = await nc.jetstream().consumers_info(stream)
        assert sorted(c.name for c in consumers) == ["release-a-stdout", "release-b-stdout"]


async def test_replicas_with_the_same_durable_split_the_records(
    nc: NATS, nats_srv: NatsServer, streams: None, tmp_path: Path
) -> None:
    """The default name is the one every release before the setting used: existing
    consumers keep their position after an upgrade."""
    pair = exporters(tmp_path, nats_srv.url, None, None)
    total = len(FLOWS) + len(DNS)
    await run_two(nc, pair, lambda: sum(len(e.stdout_records()) for e in pair) >= total)
    both = pair[0].stdout_records() + pair[1].stdout_records()
    assert lines(both) == lines(FLOWS + DNS)  # each record exactly once across the two
    for stream in (subjects.STREAM_FLOWS, subjects.STREAM_DNS):
        consumers = await nc.jetstream().consumers_info(stream)
        assert [c.name for c in consumers] == ["flowscope-exporter-stdout"]


@pytest.mark.parametrize(("durable", "reason"), [("release.a", "'.'"), ("", "empty")])
async def test_a_durable_jetstream_would_refuse_stops_the_start_up(
    nats_srv: NatsServer, tmp_path: Path, durable: str, reason: str
) -> None:
    (exporter,) = exporters(tmp_path, nats_srv.url, durable)
    try:
        assert exporter.process is not None
        code = await asyncio.to_thread(exporter.process.wait, 30)
    finally:
        await exporter.stop()
    assert code == 2, exporter.stderr()
    (line,) = exporter.stderr().strip().splitlines()
    assert "FLOWSCOPE_CONSUMER_DURABLE" in line
    assert reason in line
    assert exporter.stdout_records() == []
