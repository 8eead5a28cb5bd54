"""The README's custom-consumer example really works against a real nats-server."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

from flowscope.core import codec, subjects
from flowscope.core.records import Endpoint, FlowRecord

README = Path(__file__).resolve().parents[2] / "README.md"


def consumer_source() -> str:
    block = README.read_text().split("<!-- consumer:begin -->")[1].split("<!-- consumer:end -->")[0]
    match = re.search(r"```python\n(.*?)```", block, re.S)
    assert match, "README consumer example not found"
    return match.group(1)


def test_example_is_short() -> None:
    code = [line for line in consumer_source().splitlines() if line.strip()]
    assert len(code) <= 20


async def test_consumer_example_prints_flows(nats_srv: Any, nc: Any, tmp_path: Path) -> None:
    script = tmp_path / "consumer.py"
    script.write_text(consumer_source())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script),
        env={**os.environ, "NATS_URL": nats_srv.url},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    record = FlowRecord(
        community_id="1:x", start_ns=1, end_ns=2, end_reason="active_timeout",
        direction="forward", network_type="ipv4", transport="tcp",
        source=Endpoint("10.1.0.5", 40000, "pod", {"k8s.pod.name": "web-7d9"}),
        destination=Endpoint("93.184.216.34", 443, "external", {"domain": "example.com"}),
        bytes=5120, packets=9, reverse_bytes=20480, reverse_packets=16, observer_node="n1",
    ).to_wire()  # fmt: skip
    batch = codec.encode(codec.FLOW, [record])
    assert proc.stdout is not None
    try:
        line = b""
        for _ in range(100):  # the subscription needs a moment after start-up
            await nc.publish(
                subjects.flows("default", "_external"), batch.body, headers=batch.headers
            )
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 0.2)
                break
            except TimeoutError:
                continue
        assert line.decode().strip() == "web-7d9 -> example.com:443 5120 bytes"
    finally:
        proc.kill()
        await proc.wait()
