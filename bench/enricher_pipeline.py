"""The enricher's work path without enrichment, against a real nats-server (not a test:
prints figures).

    .venv/bin/python bench/enricher_pipeline.py [--batches 200] [--runs 3]

Everything the enricher does per raw flow batch except ``Enricher.flow_batch`` (the
compiled core): the durable pull consumer fetching raw batches of 1,000 records (~300 KB)
from JetStream (``work_loop``, as the service runs it, hold 0), ``Pipeline.handle`` with
its metrics, the output framed and published as one atomic batch (~1.1 MB: 320 subjects of
~3.4 KB, a raw batch's fan-out), the stream's acknowledgement, the raw message's ack. The
enricher is a stand-in whose ``flow_batch`` returns prepared outputs (fresh objects, one
per raw batch, freed after it as the compiled core's are), so this process's CPU time
(user + system; nats-server is another process) is the path's own cost. The raw batches
are published beforehand (not timed); every output is checked stored.

Importable code under test is whatever ``flowscope`` resolves to, so a copy of another
revision can be measured through ``PYTHONPATH`` with this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import nats
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher.consuming import WORK, Pipeline, work_loop, work_subscription
from flowscope.enricher.enriching import Output, Tally
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.settings import ConsumerSettings
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.enricher_throughput import raw_batches
from tests.support import nats_server

LINE = 1_100  # bytes per enriched NDJSON line, about an enriched flow record's
SUBJECTS = 320  # subjects a raw batch of 1,000 records fans out to


class PreparedEnricher:
    """Stands in for ``Enricher``: ``flow_batch`` hands out prepared outputs, each once
    (its lines are fresh objects, freed after publishing, as the compiled core's are)."""

    def __init__(self, outputs: list[Output]) -> None:
        self.outputs = collections.deque(outputs)

    def flow_batch(self, headers: dict[str, str] | None, body: bytes) -> Output:
        return self.outputs.popleft()


def prepared_output(round_: int, records: int) -> Output:
    """A raw batch's enriched lines: ``SUBJECTS`` subjects sharing ``records`` lines."""
    lines: dict[str, list[bytes]] = {}
    for n in range(records):
        m = n % SUBJECTS
        subject = subjects.flows(f"ns-{m // 20}", f"ns-{m % 20}-{round_ % 4}")
        lines.setdefault(subject, []).append(
            b'{"flow.n":%d,"pad":"%s"}\n' % (n, b"x" * (LINE - 30))
        )
    return Output(lines=lines, tally=Tally(records_in=records, records_out=records))


class CountingPipeline(Pipeline):
    """The pipeline, telling when ``expected`` raw messages were handled."""

    def __init__(self, *args: Any, expected: int) -> None:
        super().__init__(*args)
        self.expected = expected
        self.handled = 0
        self.done = asyncio.Event()

    async def handle(self, kind: str, msg: Msg) -> None:
        await super().handle(kind, msg)
        self.handled += 1
        if self.handled == self.expected:
            self.done.set()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_run(batches: list[codec.Batch], records: int) -> tuple[float, int]:
    """(ms of this process's CPU per raw batch, outputs stored) for one fresh server."""
    outputs = [prepared_output(r, records) for r in range(len(batches))]
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        for b in batches:
            await js.publish(subjects.raw_flows("node-0"), b.body, headers=b.headers)
        enricher: Any = PreparedEnricher(outputs)
        pipeline = CountingPipeline(
            nc, enricher, Metrics.create(CollectorRegistry()), expected=len(batches)
        )
        await pipeline.publisher.start()
        if not await pipeline.use_atomic():
            raise SystemExit("nats-server without atomic batches")
        settings = ConsumerSettings()
        work = next(w for w in WORK if w.kind == "flow")
        sub = await work_subscription(js, work, settings)
        stopping = asyncio.Event()
        start = cpu()
        loop = asyncio.create_task(work_loop(sub, "flow", pipeline, settings, 0.0, stopping))
        await asyncio.wait_for(pipeline.done.wait(), 120)
        spent = cpu() - start
        stopping.set()
        await loop
        stored = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
        await pipeline.publisher.close()
        return spent / len(batches) * 1e3, stored
    finally:
        await nc.close()
        server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    batches = raw_batches(args.batches, args.batch_size)
    sample = prepared_output(0, args.batch_size)
    size = sum(len(line) for lines in sample.lines.values() for line in lines)
    print(f"{args.batches} raw batches of {args.batch_size} records (~{len(batches[0].body) // 1000} "
          f"KB) → {SUBJECTS} subjects, ~{size // 1000} KB out each; enrichment left out")  # fmt: skip
    results = []
    for _ in range(args.runs):
        ms, stored = await one_run(batches, args.batch_size)
        expected = args.batches * len(sample.lines)
        if stored != expected:
            raise SystemExit(f"{stored} of {expected} outputs stored")
        results.append(ms)
    runs = " / ".join(f"{ms:.2f}" for ms in results)
    print(f"enricher CPU per raw batch outside flow_batch: {runs} ms "
          f"(median {statistics.median(results):.2f})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
