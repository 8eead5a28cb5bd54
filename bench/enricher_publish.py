"""The enricher's publish path alone, against a real nats-server (not a test: prints figures).

    .venv/bin/python bench/enricher_publish.py [--rounds 40] [--messages 320] [--size 3400]

The fan-out of one raw batch, as the end-to-end benchmark produces it: ``--messages``
``flowscope.flows.<src-ns>.<dst-ns>`` messages of ``--size`` bytes of NDJSON each (320 of
3.4 KB for a raw batch of 1,000 records). Client CPU time (this process, user + system)
per message, medians and best of ``--rounds`` rounds after 5 warm-up rounds, and next to
it nats-server's (another process: storing the messages, answering with acks), for:

1. ``publish_atomic``: the messages as one JetStream atomic batch, its ack awaited
   (each message with the 3 headers the pipeline gives it; the publisher adds 2);
2. ``Pipeline._publish``: the same output from the enricher's per-subject lines — building
   the messages (chunks, headers, ``Nats-Msg-Id``) included — as one atomic batch;
3. one ack per message, built beforehand (the path of servers without atomic batches,
   and of refused ones).

Then, per raw batch of 1,000 records (client CPU ms, user and system apart), the
output as the compiled core renders it — the ``_flowcore.Lines`` of the end-to-end
benchmark's raw batches and cluster (bench/enricher_throughput.py), ~1.1 MB and ~325
subjects each — published by ``AckedPublisher.publish_lines_atomic`` with ``--window``
raw batches awaiting their acks at once, as the pipeline's handlers do while enriching
a backlog:

4. gathered (``publishing.gather_lines``, the pipeline's path): the heads written, the
   lines sent by ``sendmsg`` from where flow_body rendered them;
5. the same lines joined into one buffer (``publishing.frame_lines``; the path before
   ``gather_lines``, and still that of lines held in a dict), alternating with 4.

``--storage memory`` creates the streams with memory storage instead of the file
storage flowscope gives them (``messaging.stream_config``), to show what the server's
share owes to its file store.

Importable code under test is whatever ``flowscope`` resolves to, so a copy of another
revision can be measured through ``PYTHONPATH`` with this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers, Output
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.watching import resources
from nats.aio.msg import Msg
from nats.js.api import StorageType
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import nats_server

LINE = 1_100  # bytes per NDJSON line, about an enriched flow record's


def output(messages: int, size: int, round_: int) -> Output:
    """One raw batch's enriched lines: ``messages`` subjects of ~``size`` bytes each."""
    per = max(size // LINE, 1)
    lines = {}
    for m in range(messages):
        subject = subjects.flows(f"ns-{m // 20}", f"ns-{m % 20}-{round_ % 2}")
        lines[subject] = [b'{"flow.n":%d,"pad":"%s"}' % (i, b"x" * (LINE - 30)) for i in range(per)]
    return Output(lines=lines)


def raw_message(nc: nats.NATS, sequence: int) -> Msg:
    """A work message as the pull consumer delivers it (its reply carries the sequence)."""
    reply = f"$JS.ACK.{subjects.STREAM_RAW}.enricher-flows.1.{sequence}.{sequence}.1700000000.0"
    return Msg(_client=nc, subject=subjects.raw_flows("n1"), reply=reply, data=b"")


async def measure(
    rounds: int, messages: int, run: Callable[[int], Awaitable[None]], server_pid: int
) -> tuple[float, float, float]:
    """(median, best) µs of client CPU per message over ``rounds`` after 5 warm-up
    rounds, and nats-server's CPU µs per message over those rounds."""
    per_message = []
    server = 0.0
    for r in range(5 + rounds):
        if r == 5:
            server = -process_cpu(server_pid)
        start = time.process_time()
        await run(r)
        if r >= 5:
            per_message.append((time.process_time() - start) / messages * 1e6)
    server += process_cpu(server_pid)
    return statistics.median(per_message), min(per_message), server / rounds / messages * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--messages", type=int, default=320)
    parser.add_argument("--size", type=int, default=3400)
    parser.add_argument("--window", type=int, default=8, help="raw batches awaiting acks")
    parser.add_argument("--storage", choices=("file", "memory"), default="file")
    args = parser.parse_args()
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        settings = NatsSettings(url=server.url)
        if args.storage == "file":
            await messaging.ensure_streams(js, settings)
        for spec in subjects.STREAMS if args.storage == "memory" else ():
            config = messaging.stream_config(spec, settings)
            await js.add_stream(dataclasses.replace(config, storage=StorageType.MEMORY))
        enricher = Enricher(LocalResolver(frozenset()), SocketTable(10, 1), NameCache(1, 2, 10),
                            Observers(1))  # fmt: skip
        pipeline = Pipeline(nc, enricher, Metrics.create(CollectorRegistry()))
        await pipeline.publisher.start()
        if not await pipeline.use_atomic():
            raise SystemExit("nats-server without atomic batches")
        sequence = iter(range(1, 1 << 30))
        outputs = [output(args.messages, args.size, r) for r in range(2)]

        def batch_of(seq: int) -> list[tuple[str, bytes, dict[str, str]]]:
            return pipeline._messages(codec.FLOW, outputs[seq % 2], seq)

        prebuilt: list[list[tuple[str, bytes, dict[str, str]]]] = []

        async def atomic(r: int) -> None:  # the messages built beforehand: publishing only
            await (await pipeline.publisher.publish_atomic(prebuilt[r]))

        async def through_pipeline(r: int) -> None:
            seq = next(sequence)
            assert await pipeline._publish(codec.FLOW, outputs[r % 2], raw_message(nc, seq))

        async def one_by_one(r: int) -> None:  # as Pipeline._publish does (prebuilt)
            publisher = pipeline.publisher
            if hasattr(publisher, "publish_each"):
                acks = await publisher.publish_each(prebuilt[r])
            else:  # revisions before publish_each
                acks = [await publisher.publish(*m) for m in prebuilt[r]]
            await asyncio.gather(*acks)

        print(f"{args.messages} messages of ~{args.size} bytes per batch, {args.rounds} rounds, "
              f"{args.storage} storage; client CPU µs per message, median (best); "
              "nats-server CPU µs per message:")  # fmt: skip
        for name, run in (("publish_atomic", atomic), ("Pipeline._publish, atomic", through_pipeline),
                          ("one ack per message", one_by_one)):  # fmt: skip
            prebuilt[:] = [batch_of(next(sequence)) for _ in range(5 + args.rounds)]
            median, best, served = await measure(
                args.rounds, args.messages, run, server.process.pid
            )
            print(f"  {name}: {median:.2f} ({best:.2f}); nats-server {served:.2f}")
        stored = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
        print(f"stored: {stored} messages")
        await rendered_batches(pipeline, args.window, sequence, server.process.pid)
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def rendered_batches(
    pipeline: Pipeline, window: int, sequence: Iterator[int], server_pid: int
) -> None:
    """Figures 4 and 5: the compiled core's lines of 100 raw batches, gathered and joined
    in turn, 5 rounds each."""
    from bench import enricher_throughput as e2e  # its cluster and raw batches

    converters = {r.name: r.convert for r in resources(e2e.LABELS)}
    inventory = Inventory(60)
    for kind, obj in e2e.cluster_objects():
        inventory.upsert(kind, converters[kind](obj))
    enricher = Enricher(inventory, SocketTable(200_000, 30), NameCache(60, 3600, 200_000),
                        Observers(300))  # fmt: skip
    enricher.learn_addresses(inventory.warm(1 << 30))
    enricher.learn_dns(e2e.dns_events())
    rendered = []
    for raw in e2e.raw_batches(100, 1000):
        lines = enricher.flow_batch(raw.headers, raw.body).rendered
        assert lines is not None
        rendered.append(lines)
    publisher = pipeline.publisher
    figures: dict[str, tuple[list[float], list[float], list[float]]] = {
        "gathered": ([], [], []),
        "joined": ([], [], []),
    }
    for _ in range(5):
        for name, figure in figures.items():
            given = rendered if name == "gathered" else [lines.lines() for lines in rendered]
            acks: list[asyncio.Future[bytes]] = []
            user, system = process_times()
            server = process_cpu(server_pid)
            for lines in given:
                msg_id = f"enricher:flow:{next(sequence)}:"
                ack = await publisher.publish_lines_atomic(
                    lines, codec.FLOW.header, msg_id, "done", 1 << 20
                )
                assert ack is not None
                acks.append(ack)
                if len(acks) >= window:
                    await acks.pop(0)
            await asyncio.gather(*acks)
            after = process_times()
            figure[0].append((after[0] - user) / len(given) * 1e3)
            figure[1].append((after[1] - system) / len(given) * 1e3)
            figure[2].append((process_cpu(server_pid) - server) / len(given) * 1e3)
    print(f"a raw batch's lines as the compiled core renders them (~1.1 MB, ~325 subjects), "
          f"{window} raw batches awaiting acks; client CPU ms per raw batch, median of 5:")  # fmt: skip
    for name, (user_ms, system_ms, server_ms) in figures.items():
        print(f"  {name}: {statistics.median(user_ms):.2f} user + "
              f"{statistics.median(system_ms):.2f} system; nats-server "
              f"{statistics.median(server_ms):.2f}")  # fmt: skip


def process_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    asyncio.run(main())
