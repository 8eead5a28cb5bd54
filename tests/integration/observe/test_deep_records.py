"""`observe -o json` on a record nested deeper than orjson writes (254 levels).

The contract leaves unknown keys free and the codec reads 1 024 levels, so such a record
reaches observe. Written with ``orjson.dumps``, it ended a ``--last`` replay with a
traceback (exit 1) and, live, lost every record of its batch.
"""

from __future__ import annotations

from typing import Any

import orjson
from flowscope.core import codec, subjects

from tests.integration.observe.test_observe import (
    CART,
    PG,
    _fresh_flows_stream,
    observe,
    observe_once,
)
from tests.support.flows import flow
from tests.support.nats_server import NatsServer


def _batch() -> tuple[list[dict[str, Any]], codec.Batch]:
    nested: list[Any] = []
    for _ in range(300):
        nested = [nested]
    deep = {**flow(CART, PG, sent=2), "x.nested": nested}
    records = [flow(CART, PG, sent=1), deep, flow(CART, PG, sent=3)]
    return records, codec.encode(codec.FLOW, records)


async def test_a_replay_prints_a_deeply_nested_record(nats_srv: NatsServer, nc: Any) -> None:
    js = await _fresh_flows_stream(nc)
    records, batch = _batch()
    await js.publish(subjects.flows("shop", "db"), batch.body, headers=batch.headers)
    done = await observe_once(nats_srv, "--last", "5", "-o", "json")
    assert done.code == 0, done.stderr
    assert [orjson.loads(line) for line in done.lines] == records


async def test_live_shows_every_record_of_a_batch_with_a_deep_one(
    nats_srv: NatsServer, nc: Any
) -> None:
    records, batch = _batch()
    async with observe(nats_srv, "-o", "json") as obs:
        await nc.publish(subjects.flows("shop", "db"), batch.body, headers=batch.headers)
        shown = [orjson.loads(line) for line in await obs.lines(3)]
        assert await obs.interrupt() == 0
    assert shown == records
    assert "Recursion" not in "".join(obs.stderr)
