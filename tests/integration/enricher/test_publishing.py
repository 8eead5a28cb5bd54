"""The pipelined JetStream publisher: acks, no-stream and stream errors, duplicates."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from flowscope.enricher.publishing import AckedPublisher, PublishError
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig


async def test_acks_errors_and_duplicates(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await js.add_stream(StreamConfig(name="ENRICHER_PUB_TEST", subjects=["enricher-pub-test.>"],
                                     max_msg_size=1000))  # fmt: skip
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    try:
        acks = [await publisher.publish(f"enricher-pub-test.{i}", b"x", {"Nats-Msg-Id": f"m{i}"})
                for i in range(50)]  # fmt: skip
        results = [orjson.loads(r) for r in await asyncio.gather(*acks)]
        assert [r["seq"] for r in results] == list(range(1, 51))
        again = await (await publisher.publish("enricher-pub-test.0", b"x", {"Nats-Msg-Id": "m0"}))
        assert orjson.loads(again).get("duplicate") is True
        with pytest.raises(PublishError, match="no stream"):
            await (await publisher.publish("nowhere.at.all", b"x", {}))
        with pytest.raises(PublishError, match="error"):
            await (await publisher.publish("enricher-pub-test.big", b"x" * 2000, {}))
        assert not publisher._pending  # every answered future is forgotten
    finally:
        await publisher.close()
        await js.delete_stream("ENRICHER_PUB_TEST")
