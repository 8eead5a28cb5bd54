"""nats.stream_* settings against a real nats-server: a value the server would refuse
at stream creation stops a service at start-up with one line naming the setting (exit
2), and the limits of every range the settings take are taken by the server.

Before, ``FLOWSCOPE_NATS_STREAM_REPLICAS=6`` (or a max_age under 100 ms) loaded; the
service connected, failed to create its streams and exited, again at every restart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import nats
import pytest
from flowscope.core import messaging, subjects
from flowscope.core.messaging import NatsSettings

from tests.support import nats_server


@pytest.fixture
def server() -> Iterator[nats_server.NatsServer]:
    started = nats_server.start()
    yield started
    started.close()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FLOWSCOPE_NATS_STREAM_REPLICAS", "6"), ("FLOWSCOPE_NATS_STREAM_MAX_AGE", "0.05")],
)
def test_a_stream_limit_nats_server_refuses_stops_start_up_with_exit_2(
    server: nats_server.NatsServer, variable: str, value: str
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FLOWSCOPE_NATS_URL": server.url, variable: value,
             "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    (line,) = [x for x in r.stderr.splitlines() if variable in x]
    assert line == r.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "limits",
    [{"stream_replicas": 0}, {"stream_max_age": 0.0}, {"stream_max_age": 0.1},
     {"stream_max_age": 9223372036.0}],
    ids=repr,
)  # fmt: skip
async def test_the_ends_of_the_ranges_are_taken_by_nats_server(
    server: nats_server.NatsServer, limits: dict[str, float]
) -> None:
    settings = NatsSettings(url=server.url, **limits)  # type: ignore[arg-type]
    nc = await nats.connect(server.url)
    try:
        await messaging.ensure_streams(nc.jetstream(), settings)
        info = await nc.jetstream().stream_info(subjects.STREAM_DLQ)
    finally:
        await nc.close()
    assert info.config.max_age == settings.stream_max_age
