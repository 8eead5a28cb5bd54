"""NATS unreachable at start-up: the collector's connect retries (logged) until it answers."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from flowscope.core.errors import StartupError
from flowscope.core.messaging import NatsSettings, connect
from prometheus_client import CollectorRegistry

from tests.support import nats_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_retries_until_the_server_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = NatsSettings(
        url=f"nats://127.0.0.1:{port}", connect_timeout=0.5, reconnect_wait_max=0.5
    )
    caplog.set_level(logging.WARNING, logger="flowscope.nats")
    attempt = asyncio.create_task(connect(settings, "collector", CollectorRegistry(), retry=True))
    await asyncio.sleep(1.5)
    assert not attempt.done()
    assert any("NATS unreachable; retrying" in r.getMessage() for r in caplog.records)
    (tmp_path / "js").mkdir()
    server = nats_server.start(port=port, store_dir=str(tmp_path / "js"))
    try:
        nc = await asyncio.wait_for(attempt, 10)
        assert nc.is_connected
        await nc.close()
    finally:
        server.close()


async def test_connect_without_retry_is_a_startup_error() -> None:
    settings = NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(StartupError, match="nats"):
        await connect(settings, "collector", CollectorRegistry(), retry=False)
