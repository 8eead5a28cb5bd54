"""A first connection that is cancelled ends, whenever the cancellation comes.

Python 3.11's asyncio.wait_for, which nats-py awaits the TLS handshake with, drops a
cancellation that arrives as the handshake fails (CPython gh-86296): the handshake's
error came out instead, the retry loop retried it, and the connect ran on for ever — a
stop during start-up, or a test's deadline, never ended it (about 1 in 70 cancellations
at random moments against a server whose certificate is not trusted). The race cannot
be forced, so many cancellations are made at spread moments; each must end.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from flowscope.core import messaging
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.integration.core.test_nats_security import tls_server
from tests.support.otlp_receivers import make_tls

ATTEMPTS = 300
HANG = 10.0  # s: a cancelled connect still running after this is one that never ends


async def test_a_cancelled_first_connection_always_ends(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "other").mkdir()
    server_files, _ = make_tls(tmp_path / "server")
    server = tls_server(server_files, store=str(tmp_path / "js"))
    settings = NatsSettings(
        url=f"tls://127.0.0.1:{server.port}", user="alice", password="x",
        tls_ca=str(make_tls(tmp_path / "other")[0].ca),  # not the server's: retried
        connect_timeout=2, reconnect_wait_max=0.01,
    )  # fmt: skip
    moments = random.Random(7)
    try:
        for attempt in range(ATTEMPTS):
            task = asyncio.ensure_future(messaging.connect(settings, "t", CollectorRegistry()))
            await asyncio.sleep(moments.uniform(0.0, 0.05))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=HANG)
            assert done, f"attempt {attempt}: the cancelled connect goes on"
            assert task.cancelled()
    finally:
        server.close()
