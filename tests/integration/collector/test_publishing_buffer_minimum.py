"""``publish.buffer_bytes`` holds what a drain hands over while NATS works.

It accepted 1024 bytes: a sealed batch larger than the buffer was dropped at once as
``buffer_full`` with NATS healthy (at 64 KiB, all 1000 records of a default batch).
"""

from __future__ import annotations

from typing import Any

import nats
import pytest
from flowscope.collector.metrics import CollectorMetrics
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.collector.service import publish_limits
from flowscope.collector.settings import Settings
from flowscope.core import codec, config, subjects
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import NatsSettings, ensure_streams
from prometheus_client import CollectorRegistry

from tests.integration.collector.test_publishing import running
from tests.support import nats_server
from tests.support.waiting import eventually

CHUNK = 4096  # flows a drain submits at once (draining's map chunk)
NODE = "n" * 253  # the longest node name: the longest flow lines


def settings(buffer_bytes: int) -> Settings:
    return config.load(Settings, {}, {"FLOWSCOPE_PUBLISH_BUFFER_BYTES": str(buffer_bytes)})


def smallest_buffer() -> int:
    """The smallest ``publish.buffer_bytes`` the settings accept (bisection)."""
    low, high = 1, 32 * 1024 * 1024  # high: the default, accepted
    while low < high:
        middle = (low + high) // 2
        try:
            settings(middle)
        except ConfigError:
            low = middle + 1
        else:
            high = middle
    return low


def flow(i: int) -> dict[str, Any]:
    return {
        "observer": NODE, "start_ns": 1_700_000_000_000_000_000 + i,
        "end_ns": 1_700_000_005_000_000_000 + i, "end_reason": "active_timeout", "proto": 6,
        "src": "fd00:1234:5678:9abc:def0:1234:5678:9abc", "sport": 65535, "dport": 443,
        "dst": "fd00:1234:5678:9abc:def0:1234:5678:%04x" % (i % 65536),
        "bytes": 10**12, "packets": 10**9, "rbytes": 10**12, "rpackets": 10**9,
        "tcp_flags": 255, "initiator": 1, "ifindex": 2**31 - 1,
    }  # fmt: skip


def test_a_buffer_smaller_than_a_batch_stops_start_up() -> None:
    with pytest.raises(ConfigError) as raised:
        settings(64 * 1024)
    assert "FLOWSCOPE_PUBLISH_BUFFER_BYTES" in str(raised.value)


async def test_the_smallest_buffer_drops_nothing_of_drains_while_nats_works() -> None:
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        await ensure_streams(nc.jetstream(), NatsSettings())
        got: list[int] = []

        async def handler(msg: Any) -> None:
            got.extend(r["start_ns"] for r in codec.decode(codec.RAW_FLOW, msg.headers, msg.data))

        await nc.subscribe(subjects.raw_flows(NODE), cb=handler)
        metrics = CollectorMetrics.create(CollectorRegistry())
        limits: PublishLimits = publish_limits(settings(smallest_buffer()), nc.max_payload)
        publisher = Publisher(nc.jetstream(), NODE, limits, metrics)
        total = 4 * CHUNK
        dropped = metrics.publish_dropped.labels("flows", "buffer_full")
        async with running(publisher):
            for start in range(0, total, CHUNK):  # as Producing._drain hands them over
                publisher.submit_lines(
                    "flows", codec.encode_lines([flow(i) for i in range(start, start + CHUNK)])
                )
                await publisher.catch_up("flows")
            await eventually(lambda: len(got) + dropped._value.get() == total, within=60)
        assert dropped._value.get() == 0
        assert got == [flow(i)["start_ns"] for i in range(total)]
    finally:
        await nc.close()
        server.close()
