"""Emptying the OTLP encoder's table of per-key encoders keeps every cache bounded.

The table holds one encoder per (key, type) and is emptied when full (keys are user
data: label keys, unknown keys). When that happened while a record shape was being
learned, the shape kept the encoders made before it, whose caches the budget no longer
knew: they grew with every distinct value (addresses, pod names) for as long as the
shape was used.
"""

from __future__ import annotations

from typing import Any

from flowscope.exporter.otlp_encoding import AttributeCache, CacheBudget, LogsEncoder
from flowscope.exporter.sink import Kind

from tests.unit.exporter.sample import flow


class Small(LogsEncoder):
    SHAPE_LIMIT = 100
    CACHE_BYTES = 20_000


def held_bytes(encoder: LogsEncoder) -> int:
    """What every cache the encoder can still use holds, as the budget charges it."""
    caches = {
        id(cache): cache
        for _, encoders in encoder._shapes.values()
        for e in encoders
        for cache in (e, getattr(e, "cache", None))
        if isinstance(cache, AttributeCache)
    }
    return sum(
        CacheBudget.ENTRY_COST + 2 * len(encoded)
        for cache in caches.values()
        for encoded in cache.values()
    )


def test_a_shape_learned_across_a_reset_stays_within_the_budget() -> None:
    encoder = Small({})
    # Keys of another publisher: the table is two short of full, so the next shape's
    # third key empties it.
    encoder.encode(Kind.FLOW, [{f"x.odd{i}": "v" for i in range(Small.SHAPE_LIMIT - 2)}], 1)

    def record(i: int) -> dict[str, Any]:
        return {"source.address": f"10.0.{i >> 8}.{i & 255}", "source.port": 1, "x.k": "y"}

    for start in range(0, 4000, 500):
        batch = [record(i) for i in range(start, start + 500)]
        assert encoder.encode(Kind.FLOW, batch, 1) == LogsEncoder({}).encode(Kind.FLOW, batch, 1)
    assert held_bytes(encoder) <= Small.CACHE_BYTES


def test_records_with_more_keys_than_the_table_holds_are_encoded() -> None:
    records = [flow(i, **{f"x.k{k}": k for k in range(Small.SHAPE_LIMIT + 5)}) for i in range(3)]
    encoder = Small({})
    for _ in range(2):
        assert encoder.encode(Kind.FLOW, records, 1) == LogsEncoder({}).encode(
            Kind.FLOW, records, 1
        )
    assert held_bytes(encoder) <= Small.CACHE_BYTES
