"""Records nested deeper than orjson writes (254 levels; the decoder reads 1,024 and
the contract leaves unknown keys free), end to end: real nats-server, real process.

The lane encodes records again in two places: for stdout, the valid records of a
message that lost some to the dead-letter subject; and the dead-letter copies of
records that are invalid or that a backend refused. Either raised ``Recursion limit
reached``: the first ended the process (and again at every redelivery), the second
left the batch's messages unacked, exported again at every ``ack_wait``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flowscope.core import codec, subjects
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from tests.integration.exporter.harness import Exporter, fresh_streams, metric, publish_flows
from tests.support.nats_server import NatsServer
from tests.support.otlp_receivers import HttpReceiver
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow


@pytest.fixture
async def streams(nc: NATS, nats_srv: NatsServer) -> None:
    await fresh_streams(nc, nats_srv.url)


@pytest.fixture
async def otlp() -> AsyncIterator[HttpReceiver]:
    receiver = await HttpReceiver().start()
    yield receiver
    await receiver.stop()


def deep(record: dict[str, Any], depth: int) -> bytes:
    """``record``'s NDJSON line with an unknown key of lists nested ``depth`` deep."""
    nested = b"[" * depth + b"]" * depth
    return orjson.dumps(record)[:-1] + b',"x.deep":' + nested + b"}\n"


def line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def port(i: int) -> int:
    return int(flow(i)["source.port"])


async def run_exporter(
    nc: NATS, tmp_path: Path, env: dict[str, str], messages: list[list[bytes]]
) -> tuple[Exporter, list[Msg]]:
    """Start an exporter with ``env``, publish ``messages`` (each a list of NDJSON lines)
    and then flow 6, and wait until its consumer acked everything; returns the
    exporter (stop it) and the DLQ's messages so far."""
    dead: list[Msg] = []

    async def on_dead(msg: Msg) -> None:
        dead.append(msg)

    await nc.subscribe(subjects.dlq("exporter"), cb=on_dead)
    exporter = Exporter(tmp_path, env).start()
    js = nc.jetstream()
    for lines in messages:
        headers = {codec.SCHEMA_HEADER: "flow/1", codec.COUNT_HEADER: str(len(lines))}
        await js.publish(subjects.flows("shop", "payments"), b"".join(lines), headers=headers)
    await publish_flows(nc, [flow(6)])
    consumer = f"flowscope-exporter-{env['FLOWSCOPE_SINKS']}"

    async def all_acked() -> bool:
        try:
            info = await js.consumer_info(subjects.STREAM_FLOWS, consumer)
        except NotFoundError:
            return False
        return not info.num_ack_pending and not info.num_pending

    await eventually(all_acked, what="every message acked")
    return exporter, dead


async def test_stdout_writes_deep_records_and_dead_letters_a_deep_invalid_one(
    nc: NATS, nats_srv: NatsServer, streams: None, tmp_path: Path
) -> None:
    missing = {k: v for k, v in flow(1).items() if k != "flow.end_ns"}
    messages = [
        # loses an invalid record, itself 300 deep; flow 2 is valid and 300 deep
        [line(flow(0)), deep(missing, 300), deep(flow(2), 300), line(flow(3))],
        [line(flow(4)), deep(flow(5), 1000)],  # valid: written as it came
    ]
    env = {"FLOWSCOPE_NATS_URL": nats_srv.url, "FLOWSCOPE_SINKS": "stdout"}
    exporter, dead = await run_exporter(nc, tmp_path, env, messages)
    try:
        assert exporter.process is not None and exporter.process.poll() is None
        # flow 2 encoded again as orjson writes a record (compact), as deep() does
        kept = [line(flow(0)), deep(flow(2), 300), line(flow(3))]
        assert exporter.stdout_path.read_bytes() == b"".join(kept + messages[1] + [line(flow(6))])
        await eventually(lambda: len(dead) == 1, what="the invalid record dead-lettered")
        assert "missing key 'flow.end_ns'" in dead[0].headers[subjects.DLQ_REASON_HEADER]  # type: ignore[index]
        assert dead[0].data == deep(missing, 300)
        text = await exporter.metrics()
        assert metric(text, "flowscope_exporter_records_dead_lettered_total", "stdout") == 1
    finally:
        assert await exporter.stop() == 0, exporter.stderr()


async def test_a_record_otlp_cannot_carry_is_dead_lettered_once(
    nc: NATS, nats_srv: NatsServer, streams: None, otlp: HttpReceiver, tmp_path: Path
) -> None:
    """The record is refused by the encoder (nested too deeply); its DLQ copy, too
    deep for orjson, is stored and the message acked, not exported again and again."""
    env = {
        "FLOWSCOPE_NATS_URL": nats_srv.url,
        "FLOWSCOPE_SINKS": "otlp",
        "FLOWSCOPE_OTLP_ENDPOINT": otlp.endpoint,
        "FLOWSCOPE_OTLP_PROTOCOL": "http/protobuf",
    }
    messages = [[line(flow(4)), deep(flow(5), 600)]]
    exporter, dead = await run_exporter(nc, tmp_path, env, messages)
    try:
        assert exporter.process is not None and exporter.process.poll() is None
        received = [
            next(a.value.int_value for a in lr.attributes if a.key == "source.port")
            for lr in otlp.received.log_records
        ]
        assert received == [port(4), port(6)]
        await eventually(lambda: len(dead) == 1, what="the refused record dead-lettered")
        reason = dead[0].headers[subjects.DLQ_REASON_HEADER]  # type: ignore[index]
        assert reason.startswith("otlp: ") and "nested too deeply" in reason
        assert dead[0].data == deep(flow(5), 600)
        text = await exporter.metrics()
        assert metric(text, "flowscope_exporter_records_dead_lettered_total", "otlp") == 1
    finally:
        assert await exporter.stop() == 0, exporter.stderr()
