"""A lane cancelled at the drain deadline while an export is still under way (a
backend that takes the request and never answers, a stdout pipe nobody reads): it must
end then, leaving the batch unacked for redelivery, not wait for the export."""

from __future__ import annotations

import asyncio

from flowscope.core import subjects
from flowscope.exporter.consuming import SinkLane, durable_name
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import OtlpSink
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.otlp_encoding import LogsEncoder, resource_attributes
from flowscope.exporter.settings import BatchSettings, OtlpSettings
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from tests.integration.exporter.harness import fresh_streams, publish_flows
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow


class SilentPeer:
    """A TCP server that reads requests and never answers; counts the connections."""

    def __init__(self) -> None:
        self.requests = 0
        self.open = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            if await reader.read(1):
                self.requests += 1
            await reader.read()  # until the client hangs up
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        self._server.close()


async def test_a_lane_cancelled_at_the_drain_deadline_ends_with_its_export_under_way(
    nc: NATS, nats_srv: NatsServer
) -> None:
    """Before, the lane's clean-up waited for every export under way even once cancelled
    by the runtime's drain deadline: an OTLP request to a collector that never answers
    held the service up to the request timeout past the deadline (and a stdout write to
    a pipe nobody reads, for ever)."""
    await fresh_streams(nc, nats_srv.url)
    peer = SilentPeer()
    port = await peer.start()
    target = resolve(OtlpSettings(endpoint=f"http://127.0.0.1:{port}", timeout=3600.0), {})
    metrics = ExporterMetrics.create(CollectorRegistry())
    sink = OtlpSink(target, LogsEncoder(resource_attributes("")), metrics, (0.2, 0.5))
    batch = BatchSettings(max_records=1, max_delay=0.05, max_in_flight=1, ack_wait=5.0)
    await publish_flows(nc, [flow(i) for i in range(3)], per_message=1)
    stopping = asyncio.Event()
    lane = SinkLane(sink, nc.jetstream(), nc, batch, metrics, stopping)
    task = asyncio.create_task(lane.run())
    try:
        await eventually(lambda: peer.requests >= 1, what="an export under way")
        stopping.set()  # SIGTERM: the sink stops retrying; the request is still out
        await asyncio.sleep(0.5)
        task.cancel()  # the drain deadline
        done, _ = await asyncio.wait({task}, timeout=15)
        assert done, "the cancelled lane still waits for its export"
        await eventually(lambda: peer.open == 0, what="the abandoned request closed")
    finally:
        task.cancel()
        await asyncio.wait({task})
        await peer.stop()
    info = await nc.jetstream().consumer_info(subjects.STREAM_FLOWS, durable_name("otlp"))
    assert info.ack_floor.stream_seq == 0  # nothing acked: redelivered to the next exporter
