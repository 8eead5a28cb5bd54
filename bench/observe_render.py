"""How fast `flowscope observe` turns messages into lines, against decoding alone.

Decodes batches of enriched flow records (the baseline: `codec.decode`, which every
consumer pays), then does what observe adds — contract check, filters, one text line
(or one JSON line) per record — and prints per-record medians and the ratio to the
baseline, all measured in this run.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowscope.core import codec, config
from flowscope.core.logs import RateLimitedLog
from flowscope.observe import Palette, Settings, Viewer, compile_filters, render_json, render_line

from tests.support.flows import external, flow, pod

BATCH = 500
ROUNDS = 15


def batch() -> codec.Batch:
    recs = []
    for i in range(BATCH):
        src = pod("shop", f"cart-{i % 7}", f"10.0.{i % 250}.5", 30000 + i,
                  process_executable_name="curl", process_pid=1000 + i)  # fmt: skip
        dst = (
            external(f"203.0.113.{i % 250}", 443, "api.example.com")
            if i % 2
            else pod("db", "postgres-0", "10.0.1.9", 5432)
        )
        recs.append(flow(src, dst, sent=i * 100, back=i * 1000))
    return codec.encode(codec.FLOW, recs)


def median_ns_per_record(work: Callable[[], None]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        work()
        times.append((time.perf_counter_ns() - start) / BATCH)
    return statistics.median(times)


def viewer(render: Callable[[dict, Palette], str], **filters: str) -> Viewer:
    settings = config.load(Settings, filters, env={})
    import logging

    return Viewer(compile_filters(settings.filters), render, Palette(False), io.StringIO(),
                  RateLimitedLog(logging.getLogger("bench")), lambda: None)  # fmt: skip


def main() -> None:
    b = batch()
    baseline = median_ns_per_record(lambda: codec.decode(codec.FLOW, b.headers, b.body))
    print(f"records per batch: {BATCH}, rounds: {ROUNDS}, medians per record")
    print(f"baseline codec.decode:                 {baseline:8.0f} ns")
    for name, v in (
        ("decode+check+text line, no filter", viewer(render_line)),
        ("decode+check+json line, no filter", viewer(render_json)),
        ("decode+check+text, --pod 'cart-1'", viewer(render_line, pod="cart-1")),
    ):
        ns = median_ns_per_record(lambda v=v: v.show(v.records("s", b.headers, b.body)))
        print(f"{name:38s} {ns:8.0f} ns  ({ns / baseline:4.1f}x baseline)")


if __name__ == "__main__":
    main()
