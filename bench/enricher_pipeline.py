"""The enricher's work path without enrichment, against a real nats-server (not a test:
prints figures).

    .venv/bin/python bench/enricher_pipeline.py [--batches 200] [--runs 3]

Everything the enricher does per raw flow batch except ``Enricher.flow_batch`` (the
compiled core): the durable pull consumer fetching raw batches of 1,000 records (~300 KB)
from JetStream (``work_loop``, as the service runs it, hold 0), ``Pipeline.handle`` with
its metrics, the output framed and published as one atomic batch (~1.1 MB, ~320
subjects: a raw batch's fan-out), the stream's acknowledgement, the raw message's ack.
The enricher is a stand-in whose ``flow_batch`` hands out outputs made beforehand, each
once: the compiled core's own (``Lines``, published from where the lines lie, as the
service publishes them), made by a real enricher over ``enricher_throughput``'s cluster
from raw batches of its workload; without the compiled core, synthetic lines of an
enriched record's size. This process's CPU time (user + system; nats-server is another
process) is the path's own cost. The process keeps freed memory as the service does
(``service.keep_freed_memory``): without it, nats-py's parser alone takes ~0.4 ms to
grow its buffer to a raw message. The raw batches are published beforehand (not timed);
every output is checked stored.

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
from flowscope.enricher.enriching import Enricher, Output, Tally
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.service import keep_freed_memory
from flowscope.enricher.settings import ConsumerSettings
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.enricher_throughput import loaded_enricher, raw_batches
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


def core_enricher() -> Enricher | None:
    """A real enricher with the compiled core over ``enricher_throughput``'s cluster, or
    None without the compiled core."""
    enricher, _ = loaded_enricher()
    return enricher if enricher.native else None


def outputs_of(enricher: Enricher | None, run: int, batches: int, size: int) -> list[Output]:
    """One run's outputs: the compiled core's for ``batches`` raw batches of the
    throughput benchmark's workload (another seed each run: new connections), or
    without it (``enricher`` None) synthetic ones."""
    if enricher is None:
        return [prepared_output(r, size) for r in range(batches)]
    return [enricher.flow_batch(b.headers, b.body)
            for b in raw_batches(batches, size, seed=run + 1)]  # fmt: skip


def body_bytes(output: Output) -> int:
    """The bytes of an output's lines (``Output.lines`` makes them from the compiled
    core's, kept beside them: for the one sample, not for an output to publish)."""
    return sum(len(line) for lines in output.lines.values() for line in lines)


def subjects_of(output: Output) -> int:
    """The messages (subjects) of one output's atomic batch."""
    return len(output.rendered if output.rendered is not None else output.lines)


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


def cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def one_run(
    batches: list[codec.Batch], outputs: list[Output]
) -> tuple[tuple[float, ...], int, int]:
    """((user, system) ms of this process's CPU per raw batch, outputs stored, outputs
    expected) for one fresh server; ``outputs`` is emptied (each freed once published)."""
    expected = sum(map(subjects_of, outputs))
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        for b in batches:
            await js.publish(subjects.raw_flows("node-0"), b.body, headers=b.headers)
        enricher: Any = PreparedEnricher(outputs)
        outputs.clear()
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
        (user, system), (user0, system0) = cpu(), start
        spent = (user - user0, system - system0)
        stopping.set()
        await loop
        stored = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
        await pipeline.publisher.close()
        return tuple(t / len(batches) * 1e3 for t in spent), stored, expected
    finally:
        await nc.close()
        server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    batches = raw_batches(args.batches, args.batch_size)
    enricher = core_enricher()
    sample = outputs_of(enricher, -1, 1, args.batch_size)[0]  # (seed 0: not a run's)
    kind = "the compiled core's" if enricher is not None else "synthetic"
    print(f"{args.batches} raw batches of {args.batch_size} records (~{len(batches[0].body) // 1000} "
          f"KB) → {subjects_of(sample)} subjects, ~{body_bytes(sample) // 1000} KB out each "
          f"({kind} output); enrichment left out")  # fmt: skip
    results = []
    for run in range(args.runs):
        outputs = outputs_of(enricher, run, args.batches, args.batch_size)
        ms, stored, expected = await one_run(batches, outputs)
        if stored != expected:
            raise SystemExit(f"{stored} of {expected} outputs stored")
        results.append(ms)
    runs = " / ".join(f"{user + system:.2f}" for user, system in results)
    user, system = (statistics.median(r[k] for r in results) for k in (0, 1))
    total = statistics.median(user + system for user, system in results)
    print(f"enricher CPU per raw batch outside flow_batch: {runs} ms (median {total:.2f}; "
          f"user {user:.2f} + system {system:.2f}, medians)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
