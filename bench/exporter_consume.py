"""The exporter end to end: enriched flow messages from JetStream to the stdout sink, in
records per CPU-second of the exporter process (not a test: prints figures).

    .venv/bin/python bench/exporter_consume.py [--lines 800] [--messages 100] [--runs 3]

Each message holds ``--lines`` enriched flow records (800: ~1 MB, the size the
enricher's messages reach for a busy pair of namespaces; 30: ~36 KB), lines the
enricher made for ``enricher_throughput``'s workload. The messages are stored in
FLOWSCOPE_FLOWS while a ``flowscope exporter`` process with the stdout sink (its output
to /dev/null) waits for them, and its CPU time (/proc) from then to the consumer's last
ack is the figure. Next to it, the same run's baseline: ``codec.decode`` of the same
message in this process, the decoding every sink's records go through.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nats
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from nats.js.client import JetStreamContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.enricher_throughput import loaded_enricher, process_counters, raw_batches, wait_ready
from tests.support import nats_server

CONSUMER = "flowscope-exporter-stdout"


def message(lines: int) -> codec.Batch:
    """One flow message of ``lines`` enriched records (the enricher's own lines)."""
    enricher, _ = loaded_enricher()
    made: list[bytes] = []
    for batch in raw_batches(1 + lines // 800, 1000):
        out = enricher.flow_batch(batch.headers, batch.body)
        made += [line for subject_lines in out.lines.values() for line in subject_lines]
    chunk = next(codec.chunk_lines(codec.FLOW, made[:lines], 1 << 20))
    if chunk.count != lines:
        raise SystemExit(f"{lines} lines do not fit one message (at most {chunk.count})")
    return chunk


def decode_rate(msg: codec.Batch, rounds: int = 30) -> float:
    """Records/s of ``codec.decode`` of the message in this process (median round)."""
    times = []
    for _ in range(rounds):
        start = time.process_time()
        codec.decode(codec.FLOW, msg.headers, msg.body)
        times.append(time.process_time() - start)
    return msg.count / statistics.median(times)


async def consumer_exists(js: JetStreamContext) -> bool:
    """Whether the stdout sink's durable consumer is there yet."""
    try:
        await js.consumer_info(subjects.STREAM_FLOWS, CONSUMER)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def one_run(msg: codec.Batch, messages: int) -> float:
    """Records per CPU-second of one exporter process over ``messages`` copies of
    ``msg``, on a fresh server."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    proc = None
    try:
        js = nc.jetstream()
        await messaging.ensure_streams(js, NatsSettings(url=server.url))
        port = 19_000 + os.getpid() % 10_000
        env = {**os.environ, "FLOWSCOPE_NATS_URL": server.url, "FLOWSCOPE_SINKS": "stdout",
               "FLOWSCOPE_HTTP_ADDRESS": f"127.0.0.1:{port}", "FLOWSCOPE_LOG_LEVEL": "warning"}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowscope.cli", "exporter", env=env, stdout=subprocess.DEVNULL
        )
        await wait_ready(port, proc)
        while not await consumer_exists(js):  # noqa: ASYNC110 (another process makes it)
            await asyncio.sleep(0.1)
        # Counted from here: the messages come while the exporter waits for them.
        user0, system0, _ = process_counters(proc.pid)
        for _ in range(messages):
            await js.publish(subjects.flows("ns-a", "_external"), msg.body, headers=msg.headers)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            info = await js.consumer_info(subjects.STREAM_FLOWS, CONSUMER)
            done = info.delivered.stream_seq >= messages
            if done and not info.num_pending and not info.num_ack_pending:
                break
        else:
            raise SystemExit("the exporter did not ack every message in 300 s")
        user, system, _ = process_counters(proc.pid)
        return msg.count * messages / (user - user0 + system - system0)
    finally:
        if proc is not None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
        await nc.close()
        server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=800)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    msg = message(args.lines)
    gc.collect()  # the enricher that made the lines: its cycles, not to be walked again
    print(f"{args.messages} messages of {msg.count} enriched flow records "
          f"({len(msg.body) // 1000} KB each) → exporter, stdout sink → /dev/null")  # fmt: skip
    rates, baselines = [], []
    for _ in range(args.runs):
        rates.append(await one_run(msg, args.messages))
        baselines.append(decode_rate(msg))
    rate, baseline = statistics.median(rates), statistics.median(baselines)
    runs = " / ".join(f"{r:,.0f}" for r in rates)
    print(f"exporter end to end: {runs} records per CPU-second (median {rate:,.0f}; "
          f"{1e6 / rate:.1f} µs a record)")  # fmt: skip
    print(f"baseline, codec.decode of the same message in process: {baseline:,.0f} records/s "
          f"({1e6 / baseline:.1f} µs a record); exporter / baseline {rate / baseline:.0%}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
