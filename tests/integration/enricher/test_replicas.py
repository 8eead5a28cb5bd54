"""Replicas share the raw-flow work: each batch handled once; a killed replica loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter

import aiohttp
from flowscope.core import codec, subjects
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.integration.enricher.conftest import (
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    start_replica,
)
from tests.support.nats_server import NatsServer


def batch(n: int, per: int = 5) -> list[dict]:
    """Raw flows whose source port encodes (batch, index): a unique id per record."""
    return [raw_flow("node-a", "127.0.0.1", "198.51.100.1", n * per + i + 1, 443, initiator=True)
            for i in range(per)]  # fmt: skip


def ids(records: list[dict]) -> Counter[int]:
    return Counter(r["source.port"] for r in records)


async def test_two_replicas_handle_every_batch_exactly_once(
    nats_srv: NatsServer, clean_nc: NATS
) -> None:
    settings = make_settings(nats_srv.url, **{"consumer.batch": 4, "join.merge_window": 0.05})
    replicas = [start_replica(settings), start_replica(settings)]
    for r in replicas:
        await r.ready()
    out = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    for n in range(200):
        await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("node-a"), batch(n))
    await out.wait_for(lambda recs: len(recs) >= 1000, within=60)
    await asyncio.sleep(0.5)  # anything doubled would arrive by now
    counts = ids(out.records)
    assert len(out.records) == 1000 and set(counts.values()) == {1}
    per_replica = [
        r.rt.registry.get_sample_value("flowscope_enricher_records_out_total", {"kind": "flow"})
        for r in replicas
    ]
    assert sum(per_replica) == 1000  # type: ignore[arg-type]
    assert all(n and n > 0 for n in per_replica), per_replica  # the work was shared
    for r in replicas:
        assert await r.stop() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(url: str, http_port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        "FLOWSCOPE_NATS_URL": url, "FLOWSCOPE_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "FLOWSCOPE_KUBERNETES_MODE": "local", "FLOWSCOPE_JOIN_MERGE_WINDOW": "0.2",
        "FLOWSCOPE_CONSUMER_ACK_WAIT": "2", "FLOWSCOPE_CONSUMER_BATCH": "8",
        "FLOWSCOPE_LOG_LEVEL": "warning",
    })  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli", "enricher"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


async def streams_exist(nc: NATS) -> None:
    """Wait until a replica has created the streams."""
    async with asyncio.timeout(30):
        while True:
            try:
                await nc.jetstream().stream_info(subjects.STREAM_FLOWS)
                return
            except NotFoundError:
                await asyncio.sleep(0.1)


async def test_killed_replica_loses_nothing(nats_srv: NatsServer, clean_nc: NATS) -> None:
    ports = [free_port(), free_port()]
    procs = [spawn(nats_srv.url, port) for port in ports]
    try:
        out = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
        await streams_exist(clean_nc)
        # Wait until both replicas consume: a probe batch comes back enriched.
        await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("node-a"), batch(0))
        await out.wait_for(lambda recs: len(recs) >= 5, within=30)
        await asyncio.sleep(1.0)
        for n in range(1, 201):
            await publish_raw(clean_nc, codec.RAW_FLOW, subjects.raw_flows("node-a"), batch(n))
            if n == 100:
                procs[0].send_signal(signal.SIGKILL)  # mid-stream, with batches in flight
                procs[0].wait()
        await out.wait_for(lambda recs: len(ids(recs)) >= 1005, within=60)
        counts = ids(out.records)
        assert set(counts) == set(range(1, 1006))  # nothing lost
        await asyncio.sleep(2.5)  # past ack_wait: redeliveries would have happened
        counts = ids(out.records)
        assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}
        assert procs[1].poll() is None  # the survivor carries on
        url = f"http://127.0.0.1:{ports[1]}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            metrics = await resp.text()
        # The killed replica did leave work in flight, and the survivor took it over.
        assert 'flowscope_enricher_redelivered_total{kind="flow"}' in metrics
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(15)
            assert p.stderr is not None
            p.stderr.close()
