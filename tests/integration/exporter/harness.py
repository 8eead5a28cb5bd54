"""Running ``flowscope exporter`` as a real process against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[3]


async def fresh_streams(nc: NATS, url: str) -> None:
    """Delete the exporter's streams (and with them every durable consumer), recreate."""
    js = nc.jetstream()
    for name in (subjects.STREAM_FLOWS, subjects.STREAM_DNS, subjects.STREAM_DLQ):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
    await messaging.ensure_streams(js, NatsSettings(url=url))


async def publish_flows(nc: NATS, records: list[dict[str, Any]], per_message: int = 20) -> None:
    js = nc.jetstream()
    for i in range(0, len(records), per_message):
        batch = codec.encode(codec.FLOW, records[i : i + per_message])
        await js.publish(subjects.flows("shop", "payments"), batch.body, headers=batch.headers)


async def publish_dns(nc: NATS, records: list[dict[str, Any]]) -> None:
    batch = codec.encode(codec.DNS, records)
    await nc.jetstream().publish(subjects.dns("shop"), batch.body, headers=batch.headers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Exporter:
    """One ``flowscope exporter`` process; stdout goes to a file, stderr to another."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.http_port = free_port()
        self.stdout_path = tmp / "stdout.ndjson"
        self.stderr_path = tmp / "stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Exporter:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "FLOWSCOPE_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}",
            "FLOWSCOPE_LOG_FORMAT": "text",
            "FLOWSCOPE_BATCH_MAX_DELAY": "0.1",
            "FLOWSCOPE_BATCH_RETRY_INITIAL": "0.1",
            "FLOWSCOPE_BATCH_RETRY_MAX": "0.5",
            "FLOWSCOPE_BATCH_ACK_WAIT": "3",
            "FLOWSCOPE_DRAIN_TIMEOUT": "5",
            **self.env,
        }
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flowscope.cli", "exporter"], env=env, stdout=out, stderr=err
            )
        return self

    async def ready(self, within: float = 30) -> None:
        """Wait for ``/readyz`` to answer 200: signal handlers are installed by then, so
        a SIGTERM drains instead of killing a process still importing its modules."""

        async def answered() -> bool:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.http_port)
            except OSError:
                return False
            writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
            status = await reader.readline()
            writer.close()
            return status.split(b" ")[1:2] == [b"200"]

        await eventually(answered, within=within, what="exporter ready")

    async def stop(self, sig: int = signal.SIGTERM, within: float = 20) -> int:
        """Signal the process and wait for it without blocking this event loop (the
        fake peers it may be talking to while draining run on this loop)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)

    def stdout_records(self) -> list[dict[str, Any]]:
        if not self.stdout_path.exists():
            return []
        data = self.stdout_path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        return [orjson.loads(line) for line in complete.splitlines()]

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    async def metrics(self) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.http_port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data.decode()


def metric(text: str, name: str, sink: str, stream: str = "") -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    labels = f'sink="{sink}"' + (f',stream="{stream}"' if stream else "")
    prefix = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0
