"""``Pipeline.handle`` on raw messages pulled from a real nats-server: what a handled
batch publishes, and what it adds to the metrics."""

from __future__ import annotations

import time

import nats
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher import objects
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.integration.enricher.conftest import publish_raw, raw_socket
from tests.support.nats_server import NatsServer
from tests.unit.enricher import cluster


def _dns(observer: str, client: str, qname: str) -> dict:
    return {
        "observer": observer, "time_ns": time.time_ns(), "id": 7, "qname": qname,
        "qtype": "A", "rcode": "NOERROR", "client": client, "client_port": 5000,
        "server": "10.96.0.10", "server_port": 53,
        "answers": [{"name": qname, "type": "A", "ttl": 60, "data": "192.0.2.7"}],
    }  # fmt: skip


async def _handled(nc: NATS, pipeline: Pipeline, kind: str, subject: str, n: int) -> None:
    """Pull ``n`` raw messages of one kind and handle each, as the work loop does."""
    sub = await nc.jetstream().pull_subscribe(subject, f"test-{kind}", stream=subjects.STREAM_RAW)
    for msg in await sub.fetch(n, timeout=5):
        await pipeline.handle(kind, msg)


async def test_dns_duplicates_are_counted_as_dedup_dropped(
    clean_nc: NATS, nats_srv: NatsServer
) -> None:
    """A DNS exchange reported by a node other than the client's own (which runs a
    collector) is dropped and counted in ``dedup_dropped``, like a flow duplicate."""
    await messaging.ensure_streams(clean_nc.jetstream(), NatsSettings(url=nats_srv.url))
    clock = cluster.Clock()
    inventory = Inventory(60.0, clock=clock)
    inventory.upsert("pods", objects.pod_from_json(cluster.pod("client", ips=("10.1.0.5",)), ()))
    enricher = Enricher(inventory, SocketTable(100, 30, clock), NameCache(60, 3600, 100, clock),
                        Observers(300, clock), clock=clock)  # fmt: skip
    now_ns = time.time_ns()
    enricher.learn_sockets([{**raw_socket("node-1", "connect", "10.1.0.5", 40000, "192.0.2.7",
                                          443, 5, "app"), "time_ns": now_ns}])  # fmt: skip
    registry = CollectorRegistry()
    nc = await nats.connect(nats_srv.url)
    pipeline = Pipeline(nc, enricher, Metrics.create(registry))
    await pipeline.publisher.start()
    try:
        kept, dropped = (
            _dns("node-1", "10.1.0.5", "a.example"),
            _dns("node-2", "10.1.0.5", "b.example"),
        )
        await publish_raw(nc, codec.RAW_DNS, subjects.raw_dns("node-1"), [kept])
        await publish_raw(nc, codec.RAW_DNS, subjects.raw_dns("node-2"), [dropped, dropped])
        await _handled(nc, pipeline, "dns", f"{subjects.RAW_DNS}.>", 2)
        info = await nc.jetstream().stream_info(subjects.STREAM_DNS)
        assert info.state.messages == 1

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(f"flowscope_enricher_{name}_total", labels)

        assert value("records_in", kind="dns") == 3
        assert value("records_out", kind="dns") == 1
        assert value("dedup_dropped") == 2
    finally:
        await pipeline.publisher.close()
        await nc.close()
