"""The real nats-server fixture works and JetStream is on."""

from __future__ import annotations

from typing import Any


async def test_publish_subscribe_roundtrip(nc: Any) -> None:
    sub = await nc.subscribe("flowscope.test.roundtrip")
    await nc.publish("flowscope.test.roundtrip", b"hello", headers={"A": "b"})
    msg = await sub.next_msg(timeout=10)
    assert msg.data == b"hello"
    assert msg.headers == {"A": "b"}


async def test_jetstream_enabled(nc: Any) -> None:
    info = await nc.jetstream().account_info()
    assert info.limits is not None
