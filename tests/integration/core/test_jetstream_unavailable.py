"""A NATS server without JetStream: start-up stops with one line, not a traceback."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
from flowscope.core import messaging
from flowscope.core.errors import StartupError
from flowscope.core.messaging import NatsSettings
from flowscope.core.runtime import Runtime, RuntimeSettings

from tests.support import nats_server


async def test_a_server_without_jetstream_stops_start_up_with_one_line() -> None:
    """Before, the streams' first request raised nats-py's ServiceUnavailableError
    ("code=None err_code=None description='None'") out of the service's body: a
    traceback and exit status 1, as for a bug, instead of the start-up error (exit 2)
    that says JetStream is missing."""
    server = nats_server.start(jetstream=False)
    try:
        async with AsyncExitStack() as stack:
            rt = Runtime("test", RuntimeSettings(http_address=""), stack)
            with pytest.raises(StartupError, match="JetStream") as e:
                await messaging.connect_service(rt, NatsSettings(url=server.url), "test")
            rt.stop()
        assert "\n" not in str(e.value)
        assert "-js" in str(e.value)
    finally:
        server.close()
