"""Exporter sinks: records per CPU-second of the exporter process, per sink.

Each sink exports the same enriched flow records (batches of 1,000, as the consumer
hands them over) to its test peer on loopback — the fake Elasticsearch, the OTLP gRPC
and HTTP receivers, and a ``cat > /dev/null`` pipe for stdout. The peers run in a
separate process, so only the exporter's own work is counted: the figure is records
per second of CPU time of this process (per core). Next to each figure is the same
run's baseline — plain ``orjson.dumps`` of each record — and the ratio.

    .venv/bin/python bench/exporter_sinks.py [--records 20000] [--rounds 5] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from flowscope.core import codec
from flowscope.core.records import validate_flow
from flowscope.exporter.ecs import EcsMapper
from flowscope.exporter.elasticsearch import ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp import OtlpSink
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.otlp_encoding import LogsEncoder, resource_attributes
from flowscope.exporter.settings import BatchSettings, ElasticsearchSettings, OtlpSettings
from flowscope.exporter.sink import Kind, Sink
from flowscope.exporter.stdout import StdoutSink
from prometheus_client import CollectorRegistry

from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.otlp_receivers import GrpcReceiver, HttpReceiver
from tests.unit.exporter.sample import flow

BATCH = BatchSettings().max_records  # the default; --batch changes it
# Baseline: orjson.dumps of each record, the bytes dropped at once — the pure encoding
# cost. The second line keeps every result in a list; on glibc that is many times
# slower (orjson over-allocates then shrinks each buffer, so kept results fragment the
# heap and touch fresh pages), which shows how much of any figure here is the allocator.
BASELINE = "orjson.dumps (baseline)"
KEPT = "orjson.dumps, results kept"
dumps = orjson.dumps


def drop_all(records: list[dict[str, Any]]) -> None:
    for record in records:
        dumps(record)


def serve_peers(ports: Any) -> None:
    """Child process: the three peers on loopback until killed."""

    async def main() -> None:
        es = await FakeElasticsearch().start()
        grpc_rx = await GrpcReceiver().start()
        http_rx = await HttpReceiver().start()
        ports.put((es.port, grpc_rx.port, http_rx.port))
        await asyncio.Event().wait()  # until the parent kills this process

    asyncio.run(main())


def cpu_rate(count: int, run: Callable[[], object]) -> float:
    """Records per CPU-second of this process (all threads), garbage collector paused
    as timeit does, so one path does not pay for another's garbage."""
    gc.collect()
    gc.disable()
    started = time.process_time()
    try:
        run()
    finally:
        gc.enable()
    return count / (time.process_time() - started)


async def async_cpu_rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    gc.collect()
    gc.disable()
    started = time.process_time()
    try:
        await run()
    finally:
        gc.enable()
    return count / (time.process_time() - started)


async def export_all(sink: Sink, records: list[dict[str, Any]], batch: int) -> None:
    for i in range(0, len(records), batch):
        result = await sink.export(Kind.FLOW, records[i : i + batch])
        assert not result.rejected and not result.deferred, result


def make_sinks(es_port: int, grpc_port: int, http_port: int, devnull_fd: int) -> dict[str, Sink]:
    metrics = ExporterMetrics.create(CollectorRegistry())

    def otlp(endpoint: str, protocol: str, compression: str) -> OtlpSink:
        target = resolve(
            OtlpSettings(endpoint=endpoint, protocol=protocol, compression=compression), {}
        )
        return OtlpSink(target, LogsEncoder(resource_attributes("bench")), metrics)

    es = ElasticsearchSettings(url=f"http://127.0.0.1:{es_port}")
    return {
        "stdout (pipe)": StdoutSink(devnull_fd),
        "elasticsearch _bulk": ElasticsearchSink(es, EcsMapper("bench"), metrics),
        "otlp grpc": otlp(f"http://127.0.0.1:{grpc_port}", "grpc", "none"),
        "otlp grpc gzip": otlp(f"http://127.0.0.1:{grpc_port}", "grpc", "gzip"),
        "otlp http": otlp(f"http://127.0.0.1:{http_port}", "http/protobuf", "none"),
        "otlp http gzip": otlp(f"http://127.0.0.1:{http_port}", "http/protobuf", "gzip"),
    }


def start_reader() -> subprocess.Popen[bytes]:
    """The process at the other end of stdout's pipe."""
    return subprocess.Popen(["sh", "-c", "cat > /dev/null"], stdin=subprocess.PIPE)


async def bench(n: int, rounds: int, batch: int) -> None:
    ports: Any = multiprocessing.get_context("spawn").Queue()
    peers = multiprocessing.get_context("spawn").Process(
        target=serve_peers, args=(ports,), daemon=True
    )
    peers.start()
    es_port, grpc_port, http_port = ports.get(timeout=60)
    cat = start_reader()
    assert cat.stdin is not None
    sinks = make_sinks(es_port, grpc_port, http_port, cat.stdin.fileno())
    figures: dict[str, list[float]] = {
        name: [] for name in [BASELINE, KEPT, "consume: decode+validate", *sinks]
    }

    body = codec.encode(codec.FLOW, [flow(i) for i in range(n)])
    try:
        for r in range(rounds):
            records = [flow(r * n + i) for i in range(n)]  # distinct ids every round
            figures[BASELINE].append(cpu_rate(n, lambda rs=records: drop_all(rs)))
            figures[KEPT].append(cpu_rate(n, lambda rs=records: [dumps(x) for x in rs]))
            figures["consume: decode+validate"].append(
                cpu_rate(
                    n,
                    lambda: [
                        validate_flow(x) for x in codec.decode(codec.FLOW, body.headers, body.body)
                    ],
                )
            )
            for name, sink in sinks.items():
                figures[name].append(
                    await async_cpu_rate(n, lambda s=sink, rs=records: export_all(s, rs, batch))
                )  # type: ignore[misc]
    finally:
        for sink in sinks.values():
            await sink.close()
        cat.stdin.close()
        cat.wait()
        peers.kill()
    baseline = statistics.median(figures[BASELINE])
    print(f"{n} flow records x {rounds} rounds, batches of {batch}; median records per CPU-second")
    print(f"{'path':28} {'records/s':>12} {'vs orjson':>10}")
    for name, values in figures.items():
        rate = statistics.median(values)
        print(f"{name:28} {rate:12,.0f} {rate / baseline:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=BATCH, help="records per export")
    args = parser.parse_args()
    asyncio.run(bench(args.records, args.rounds, args.batch))


if __name__ == "__main__":
    main()
