"""A stream in the way of flowscope's own, against a real nats-server: a stream of a
flowscope name whose configuration nats-server will not change (another retention or
storage: an earlier version's, an operator's), or another stream capturing flowscope's
subjects, stops a service at start-up with one line naming the stream and the server's
reason (exit 2); a service already running keeps retrying (a nats-py error).

Before, the first ended start-up on a traceback (exit 1, a crash loop), and the second on
a traceback of "stream not found": the refused creation was taken for another replica's,
and the stream that does not exist was updated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import nats
import pytest
from flowscope.core import messaging
from flowscope.core.messaging import NatsSettings, StreamRefusedError
from nats.errors import Error as NatsError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from tests.support import nats_server

IN_THE_WAY = {
    "workqueue": (
        StreamConfig(
            name="FLOWSCOPE_RAW", subjects=["flowscope.raw.>"],
            retention=RetentionPolicy.WORK_QUEUE,
        ),
        "update stream FLOWSCOPE_RAW: stream configuration update can not change retention",
    ),
    "memory": (
        StreamConfig(
            name="FLOWSCOPE_FLOWS", subjects=["flowscope.flows.>"], storage=StorageType.MEMORY
        ),
        "update stream FLOWSCOPE_FLOWS: stream configuration update can not change storage",
    ),
    "overlap": (
        StreamConfig(name="ARCHIVE", subjects=["flowscope.>"]),
        "create stream FLOWSCOPE_RAW: subjects overlap with an existing stream",
    ),
}  # fmt: skip


@pytest.fixture
def server() -> Iterator[nats_server.NatsServer]:
    started = nats_server.start()
    yield started
    started.close()


async def _add(url: str, config: StreamConfig) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()


@pytest.mark.parametrize("case", list(IN_THE_WAY))
async def test_a_stream_in_the_way_is_a_nats_error_naming_it(
    server: nats_server.NatsServer, case: str
) -> None:
    config, reason = IN_THE_WAY[case]
    await _add(server.url, config)
    nc = await nats.connect(server.url)
    try:
        with pytest.raises(StreamRefusedError) as caught:
            await messaging.ensure_streams(nc.jetstream(), NatsSettings(url=server.url))
    finally:
        await nc.close()
    assert isinstance(caught.value, NatsError)  # what a running service's retries catch
    assert reason in str(caught.value)


@pytest.mark.parametrize("case", list(IN_THE_WAY))
def test_a_stream_in_the_way_stops_start_up_with_one_line_and_exit_2(
    server: nats_server.NatsServer, case: str
) -> None:
    config, reason = IN_THE_WAY[case]
    asyncio.run(_add(server.url, config))
    r = subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FLOWSCOPE_NATS_URL": server.url,
             "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("flowscope exporter: start-up check nats failed:")
    assert reason in last


async def test_a_stream_of_the_same_name_another_replica_made_is_updated(
    server: nats_server.NatsServer,
) -> None:
    """Not a refusal: a replica with other limits made it (kept as before)."""
    settings = NatsSettings(url=server.url)
    other = NatsSettings(url=server.url, stream_max_age=60.0)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(messaging.stream_config(messaging.subjects.STREAMS[0], other))
        await messaging.ensure_streams(js, settings)  # the name in use: an update
        info = await js.stream_info(messaging.subjects.STREAM_RAW)
    finally:
        await nc.close()
    assert info.config.max_age == settings.stream_max_age
