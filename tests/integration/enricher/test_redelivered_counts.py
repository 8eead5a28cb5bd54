"""A raw batch handled again after its output was stored — its ack lost, or a second
replica handling it while the first still was — with a real nats-server: JetStream
stores the output once, and the batch's metrics count once too (records, lookups,
joins), counted by the attempt that stored its output anew."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry

from tests.integration.enricher.conftest import raw_flow
from tests.support import nats_server

COUNTED = ("records_in", "records_out", "lookups", "process_joins", "dns_joins")


@pytest.fixture
async def nc() -> AsyncIterator[NATS]:
    """A client of a fresh nats-server with flowscope's streams (atomic batches allowed)."""
    server = nats_server.start()
    client = await nats.connect(server.url)
    await messaging.ensure_streams(client.jetstream(), NatsSettings(url=server.url))
    try:
        yield client
    finally:
        await client.close()
        server.close()


async def delivered_twice(nc: NATS, nodes: list[str]) -> tuple[list[Msg], list[Msg]]:
    """One raw flow batch per node (two flows to different namespaces), each fetched,
    left unacked, and fetched again once redelivered: (first deliveries, second)."""
    js = nc.jetstream()
    for node in nodes:
        batch = codec.encode(codec.RAW_FLOW, [
            raw_flow(node, "127.0.0.1", "192.0.2.9", 4242, 443),
            raw_flow(node, "192.0.2.7", "127.0.0.1", 5353, 80),
        ])  # fmt: skip
        await js.publish(subjects.raw_flows(node), batch.body, headers=batch.headers)
    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=1)
    sub = await js.pull_subscribe(f"{subjects.RAW_FLOWS}.>", "t", stream=subjects.STREAM_RAW,
                                  config=config)  # fmt: skip
    first = await sub.fetch(len(nodes), timeout=5)
    second: list[Msg] = []
    while len(second) < len(nodes):  # redelivered after ack_wait
        second += await sub.fetch(len(nodes) - len(second), timeout=5)
    assert [m.metadata.num_delivered for m in first + second] == [1] * len(nodes) + [2] * len(nodes)
    return first, second


def counts(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The per-record counters' samples (those a raw flow batch's tally adds to)."""
    names = {f"flowscope_enricher_{name}_total" for name in COUNTED}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name in names
    }


async def started(nc: NATS, atomic: bool) -> tuple[Pipeline, CollectorRegistry]:
    """A started pipeline in local mode, 127.0.0.1 this host's (so that a batch's two
    flows go to two subjects), with or without atomic batches."""
    registry = CollectorRegistry()
    enricher = Enricher(LocalResolver(frozenset({"127.0.0.1"})), SocketTable(10, 1),
                        NameCache(1, 2, 10), Observers(1))  # fmt: skip
    p = Pipeline(nc, enricher, Metrics.create(registry))
    await p.publisher.start()
    if atomic:
        assert await p.use_atomic()
    return p, registry


async def stored_records(nc: NATS) -> int:
    """Records in the enriched flow stream."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(subjects.FLOWS_ALL, "count", stream=subjects.STREAM_FLOWS)
    n = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
    msgs = await sub.fetch(n, timeout=5) if n else []
    return sum(len(codec.decode(codec.FLOW, m.headers, m.data)) for m in msgs)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "one-by-one"])
@pytest.mark.parametrize("order", ["ack-lost", "overtaken"])
async def test_a_batch_stored_before_counts_once(nc: NATS, atomic: bool, order: str) -> None:
    """ack-lost: the first delivery stores and counts; the redelivery finds its marker
    stored and counts nothing. overtaken: the redelivery (another replica) stores first
    and counts; the first delivery, still going, finds its output stored (an atomic
    batch refused for a duplicate id, or the marker's ack marked ``duplicate``) and
    counts nothing."""
    (first,), (second,) = await delivered_twice(nc, ["n1"])
    p, registry = await started(nc, atomic)
    try:
        earlier, later = (first, second) if order == "ack-lost" else (second, first)
        await p.handle("flow", earlier)
        once = counts(registry)
        await p.handle("flow", later)
        assert counts(registry) == once
        assert once[("flowscope_enricher_records_out_total", (("kind", "flow"),))] == 2
        assert await stored_records(nc) == 2
    finally:
        await p.publisher.close()


async def test_batches_stored_as_a_group_count_once(nc: NATS) -> None:
    """Two fresh batches published as one atomic batch count once each; redelivered
    (acks lost), each finds its own marker and counts nothing more."""
    first, second = await delivered_twice(nc, ["n1", "n2"])
    p, registry = await started(nc, atomic=True)
    try:
        await p.handle_flows(first)
        grouped = registry.get_sample_value("flowscope_enricher_grouped_batches_total")
        assert grouped == 2
        once = counts(registry)
        for msg in second:
            await p.handle("flow", msg)
        assert counts(registry) == once
        assert once[("flowscope_enricher_records_out_total", (("kind", "flow"),))] == 4
        assert await stored_records(nc) == 4
    finally:
        await p.publisher.close()


async def test_a_batch_not_stored_before_counts_when_stored(nc: NATS) -> None:
    """A redelivered batch whose earlier attempt stored nothing (its replica died while
    holding it) counts when the redelivery stores it."""
    _, (second,) = await delivered_twice(nc, ["n1"])
    p, registry = await started(nc, atomic=True)
    try:
        await p.handle("flow", second)
        assert (
            registry.get_sample_value("flowscope_enricher_records_out_total", {"kind": "flow"}) == 2
        )
        assert await stored_records(nc) == 2
    finally:
        await p.publisher.close()
