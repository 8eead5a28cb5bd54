"""The state feeds' replay: a replica starts its work only once every socket and DNS
event in ``state_lookback`` is learned (real nats-server, the real pipeline)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher import consuming
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from tests.integration.enricher.conftest import publish_raw, raw_socket
from tests.integration.enricher.test_nats_restart import publish_when_stored
from tests.support import nats_server

BATCHES, PER_BATCH = 300, 20


def answer(n: int) -> dict:
    """A raw DNS exchange: client 10.9.0.1 asked ``name-<n>.example`` and got its own
    address for it."""
    name = f"name-{n}.example"
    return {"observer": "n1", "time_ns": 1, "id": n % 65536, "qname": name, "qtype": "A",
            "rcode": "NOERROR", "client": "10.9.0.1", "client_port": 5353,
            "server": "10.96.0.10", "server_port": 53,
            "answers": [{"name": name, "type": "A", "ttl": 300,
                         "data": f"10.10.{n // 250}.{n % 250}"}]}  # fmt: skip


async def test_caught_up_only_once_both_feeds_are_replayed(clean_nc: NATS) -> None:
    """One socket event and many DNS answers stored before the replica starts: the
    socket feed, subscribed first, reaches its end long before the DNS feed is
    replayed; caught up must wait for both."""
    js = clean_nc.jetstream()
    await messaging.ensure_streams(js, NatsSettings(url=clean_nc.connected_url.geturl()))
    await publish_raw(clean_nc, codec.RAW_SOCKET, subjects.raw_sockets("n1"),
                      [raw_socket("n1", "connect", "10.9.0.1", 4000, "10.9.0.2", 80, 7, "app")])  # fmt: skip
    for b in range(BATCHES):
        batch = [answer(b * PER_BATCH + i) for i in range(PER_BATCH)]
        await publish_raw(clean_nc, codec.RAW_DNS, subjects.raw_dns("n1"), batch)
    enricher = Enricher(LocalResolver(frozenset()), SocketTable(100, 30),
                        NameCache(60, 3600, 100_000), Observers(300))  # fmt: skip
    pipeline = Pipeline(clean_nc, enricher, Metrics.create(CollectorRegistry()))
    feeds = await consuming.state_feed(js, pipeline, 300)
    try:
        await asyncio.wait_for(feeds.caught_up.wait(), 30)
        assert len(enricher.names) == BATCHES * PER_BATCH
        assert len(enricher.sockets) == 1
    finally:
        await feeds.close()


async def test_feeds_are_lost_with_their_stream_and_come_back_with_it(clean_nc: NATS) -> None:
    """The raw stream deleted under the feeds (a server restarted on an empty store):
    they are reported lost until the stream is made again, then read the new stream
    from its start (its sequences restarted)."""
    js = clean_nc.jetstream()
    settings = NatsSettings(url=clean_nc.connected_url.geturl())
    await messaging.ensure_streams(js, settings)
    enricher = Enricher(LocalResolver(frozenset()), SocketTable(100, 30),
                        NameCache(60, 3600, 100), Observers(300))  # fmt: skip
    pipeline = Pipeline(clean_nc, enricher, Metrics.create(CollectorRegistry()))
    feeds = await consuming.state_feed(js, pipeline, 300)
    try:
        await asyncio.wait_for(feeds.caught_up.wait(), 30)
        assert await feeds.keep()
        await js.delete_stream(subjects.STREAM_RAW)
        assert not await feeds.keep()
        await messaging.ensure_streams(js, settings)
        await publish_raw(clean_nc, codec.RAW_SOCKET, subjects.raw_sockets("n1"),
                          [raw_socket("n1", "connect", "10.9.0.1", 4000, "10.9.0.2", 80, 7, "app")])  # fmt: skip
        assert await feeds.keep()
        for _ in range(200):  # delivered to the feed's callback asynchronously
            if len(enricher.sockets):
                break
            await asyncio.sleep(0.05)
        assert len(enricher.sockets) == 1
    finally:
        await feeds.close()


class Recording(Pipeline):
    """The real pipeline, noting the stream sequence of every message it learns."""

    def __init__(self, nc: NATS, enricher: Enricher, metrics: Metrics) -> None:
        super().__init__(nc, enricher, metrics)
        self.learned: list[int] = []

    def learn(self, msg: Msg) -> None:
        self.learned.append(msg.metadata.sequence.stream)
        super().learn(msg)


async def test_a_feed_rebuilt_by_nats_py_before_its_first_message_learns_nothing_older(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Feeds opened past every stored event (all older than the lookback) and NATS
    restarted on the same store before a new one comes: nats-py rebuilds each ordered
    consumer from the last sequence it delivered, none, so from the stream's start. The
    old events must not be learned (stale sockets and names), and ``keep`` reopens a
    feed so rebuilt from where it is, rather than let it read the whole stream again."""
    server = nats_server.start()
    port, store = server.port, server.store_dir
    nc = await nats.connect(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    feeds = None
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        for n in range(3):  # sequences 1-6, all older than the lookback
            await publish_raw(nc, codec.RAW_SOCKET, subjects.raw_sockets("n1"), [sock(1000 + n)])
            await publish_raw(nc, codec.RAW_DNS, subjects.raw_dns("n1"), [answer(n)])
        enricher = Enricher(LocalResolver(frozenset()), SocketTable(100, 30),
                            NameCache(60, 3600, 100), Observers(300))  # fmt: skip
        pipeline = Recording(nc, enricher, Metrics.create(CollectorRegistry()))
        feeds = await consuming.state_feed(js, pipeline, 0)
        await asyncio.wait_for(feeds.caught_up.wait(), 10)
        server.stop()
        server = nats_server.start(port=port, store_dir=store)
        await publish_when_stored(nc, codec.RAW_SOCKET, subjects.raw_sockets("n1"), [sock(2000)])
        await publish_when_stored(nc, codec.RAW_DNS, subjects.raw_dns("n1"), [answer(3)])
        # keep() not called: only nats-py's rebuild (after missed heartbeats) reads them
        for _ in range(1200):
            if {7, 8} <= set(pipeline.learned):
                break
            await asyncio.sleep(0.05)
        assert sorted(pipeline.learned) == [7, 8]
        assert (len(enricher.sockets), len(enricher.names)) == (1, 1)
        caplog.clear()
        assert await feeds.keep()
        lines = [r for r in caplog.records if r.getMessage() == "state feed subscribed again"]
        reopened = [r.__dict__["subject"] for r in lines]
        assert sorted(reopened) == sorted(consuming.StateFeeds.SUBJECTS)
        await publish_raw(nc, codec.RAW_SOCKET, subjects.raw_sockets("n1"), [sock(3000)])
        for _ in range(200):
            if 9 in pipeline.learned:
                break
            await asyncio.sleep(0.05)
        assert sorted(pipeline.learned) == [7, 8, 9]
    finally:
        if feeds is not None:
            await feeds.close()
        await nc.close()
        server.close()


def sock(port: int) -> dict:
    return raw_socket("n1", "connect", "10.9.0.1", port, "10.9.0.2", 80, port, "app")
