"""Bad raw messages: counted, dead-lettered with a reason, and the enricher carries on."""

from __future__ import annotations

import asyncio
from typing import Any

from flowscope.core import codec, subjects
from nats.aio.client import Client as NATS

from tests.integration.enricher.conftest import (
    collect,
    make_settings,
    publish_raw,
    raw_flow,
    raw_socket,
    start_replica,
)
from tests.support.nats_server import NatsServer


async def test_garbage_and_wrong_version_dead_lettered_and_good_work_continues(
    nats_srv: NatsServer, clean_nc: NATS
) -> None:
    replica = start_replica(make_settings(nats_srv.url))
    await replica.ready()
    js = clean_nc.jetstream()
    dlq: list[Any] = []

    async def on_dlq(msg: Any) -> None:
        dlq.append(msg)

    await clean_nc.subscribe(subjects.dlq("enricher"), cb=on_dlq)
    out = await collect(clean_nc, subjects.FLOWS_ALL, codec.FLOW)
    flows = subjects.raw_flows("node-x")
    good = codec.encode(codec.RAW_FLOW, [raw_flow("node-x", "127.0.0.1", "192.0.2.1", 1, 2)])
    await js.publish(flows, b"\x00\xffnot json\n", headers=good.headers)
    await js.publish(flows, good.body, headers={**good.headers, codec.SCHEMA_HEADER: "raw.flow/9"})
    await js.publish(flows, good.body)  # no headers at all
    await js.publish(flows, good.body[:-5], headers=good.headers)  # truncated
    # One bad record among good ones: the good ones go on, the bad one is dead-lettered.
    mixed = [raw_flow("node-x", "127.0.0.1", "192.0.2.1", 10, 2),
             {**raw_flow("node-x", "127.0.0.1", "192.0.2.1", 11, 2), "src": "999.1.1.1"},
             raw_flow("node-x", "127.0.0.1", "192.0.2.1", 12, 2)]  # fmt: skip
    await publish_raw(clean_nc, codec.RAW_FLOW, flows, mixed)
    bad_socket = raw_socket("node-x", "teleport", "127.0.0.1", 1, "192.0.2.1", 2, 1, "x")
    await publish_raw(clean_nc, codec.RAW_SOCKET, subjects.raw_sockets("node-x"), [bad_socket])
    await js.publish(
        subjects.raw_dns("node-x"), b"{}\n", headers={codec.SCHEMA_HEADER: "raw.dns/1"}
    )
    # ... and the enricher carries on.
    await publish_raw(
        clean_nc, codec.RAW_FLOW, flows, [raw_flow("node-x", "127.0.0.1", "192.0.2.1", 99, 2)]
    )
    await out.wait_for(lambda recs: {r["source.port"] for r in recs} >= {10, 12, 99})
    assert {r["source.port"] for r in out.records} == {10, 12, 99}
    async with asyncio.timeout(10):
        while len(dlq) < 7:  # noqa: ASYNC110 - the DLQ subscription fills the list
            await asyncio.sleep(0.05)
    reasons = [m.headers[subjects.DLQ_REASON_HEADER] for m in dlq]
    origins = [m.headers[subjects.DLQ_SUBJECT_HEADER] for m in dlq]
    assert len(dlq) == 7
    assert sum("malformed" in r for r in reasons) == 1
    assert sum("schema-mismatch" in r and "raw.flow/9" in r for r in reasons) == 1
    assert sum("schema-mismatch" in r and "None" in r for r in reasons) == 1
    assert sum("truncated" in r for r in reasons) == 1
    assert sum("999.1.1.1" in r for r in reasons) == 1
    assert sum("teleport" in r for r in reasons) == 1
    assert sum("raw.dns" in r for r in reasons) == 1
    assert origins.count(flows) == 5
    bad_record_msg = next(m for m in dlq if "999.1.1.1" in m.headers[subjects.DLQ_REASON_HEADER])
    assert (
        codec.decode(codec.RAW_FLOW, bad_record_msg.headers, bad_record_msg.data)[0]["sport"] == 11
    )
    garbage = next(m for m in dlq if "malformed" in m.headers[subjects.DLQ_REASON_HEADER])
    assert garbage.data == b"\x00\xffnot json\n"  # kept byte for byte
    registry = replica.rt.registry
    assert registry.get_sample_value("flowscope_enricher_dead_lettered_total") == 7
    assert registry.get_sample_value("flowscope_enricher_bad_records_total", {"kind": "flow"}) == 1
    assert replica.task.done() is False
    assert await replica.stop() == 0
