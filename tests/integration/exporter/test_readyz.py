"""What a running ``flowscope exporter`` process answers on ``/readyz``: not ready while
it drains after SIGTERM (``/healthz`` still ok), and not ready, naming the stream, while
a stream it consumes is missing. Before, it said ready in both cases."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import termios
from pathlib import Path
from typing import Any

import orjson
from flowscope.core import messaging, subjects
from flowscope.core.messaging import NatsSettings
from nats.aio.client import Client as NATS

from tests.integration.exporter.harness import Exporter, fresh_streams, metric, publish_flows
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow

PIPE_PAGE = 4096  # the smallest pipe Linux makes: one message of records overflows it


async def get(exporter: Exporter, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` on the exporter's HTTP endpoint: (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", exporter.http_port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


async def test_readyz_says_draining_after_sigterm_while_healthz_stays_ok(
    tmp_path: Path, nc: NATS, nats_srv: NatsServer
) -> None:
    """stdout is a pipe nobody reads: the stdout sink's write blocks, so the drain lasts
    until the test reads it (``drain_timeout`` is far longer)."""
    await fresh_streams(nc, nats_srv.url)
    os.mkfifo(tmp_path / "stdout.ndjson")
    pipe = os.open(tmp_path / "stdout.ndjson", os.O_RDONLY | os.O_NONBLOCK)
    env = {"FLOWSCOPE_NATS_URL": nats_srv.url, "FLOWSCOPE_SINKS": "stdout"}
    exporter = Exporter(tmp_path, {**env, "FLOWSCOPE_DRAIN_TIMEOUT": "600"}).start()
    process = exporter.process
    assert process is not None
    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, PIPE_PAGE)
        await exporter.ready()
        await publish_flows(nc, [flow(i) for i in range(100)])

        async def blocked() -> bool:  # an export under way, its write stuck on the pipe
            in_flight = metric(
                await exporter.metrics(), "flowscope_exporter_batches_in_flight", "stdout"
            )
            queued = fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0")
            return in_flight >= 1 and int.from_bytes(queued, "little") >= PIPE_PAGE

        await eventually(blocked, what="an export blocked on the full pipe")
        process.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            status, report = await get(exporter, "/readyz")
            return status == 503 and "draining" in report["checks"]["stopping"]["detail"]

        await eventually(draining, what="/readyz 503 while draining")
        assert (await get(exporter, "/healthz"))[0] == 200
        assert process.poll() is None  # still draining: the pipe is still full

        def read_out() -> bool:
            with contextlib.suppress(BlockingIOError):
                while os.read(pipe, 1 << 16):  # b"": the exporter closed its end
                    pass
            return process.poll() is not None

        await eventually(read_out, what="the exporter exiting once its output is read")
        assert process.returncode == 0, exporter.stderr()
    finally:
        await exporter.stop()
        os.close(pipe)


async def test_readyz_names_a_missing_stream_until_it_is_back(
    tmp_path: Path, nc: NATS, nats_srv: NatsServer
) -> None:
    await fresh_streams(nc, nats_srv.url)
    env = {"FLOWSCOPE_NATS_URL": nats_srv.url, "FLOWSCOPE_SINKS": "stdout"}
    exporter = Exporter(tmp_path, env).start()
    try:
        await exporter.ready()
        await nc.jetstream().delete_stream(subjects.STREAM_FLOWS)

        async def missing() -> bool:
            status, report = await get(exporter, "/readyz")
            detail = report["checks"]["sink-stdout"]["detail"]
            return status == 503 and subjects.STREAM_FLOWS in detail

        await eventually(missing, what="/readyz 503 naming the missing stream")
        await messaging.ensure_streams(nc.jetstream(), NatsSettings(url=nats_srv.url))
        await exporter.ready()
        await publish_flows(nc, [flow(1)])
        await eventually(lambda: len(exporter.stdout_records()) == 1, what="a record exported")
    finally:
        assert await exporter.stop() == 0, exporter.stderr()
