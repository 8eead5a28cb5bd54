"""`flowscope observe` on a running pipeline: a real `flowscope enricher` (local mode)
turns raw collector messages into enriched flows, and observe shows them, filtered.

MERGE-DEPENDENT: needs the enricher (branch `enricher`); on a branch where
`flowscope enricher` is still the placeholder this test fails with its start-up line.
The collector's part is played by the test: it publishes the raw messages a collector
publishes (the collector itself needs root and BPF; its own tests cover that hop).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from flowscope.core import codec, messaging, records, subjects
from nats.js.errors import NotFoundError

from tests.integration.observe.test_observe import FLOWSCOPE, TIMEOUT, _env, observe
from tests.support.nats_server import NatsServer

NODE = "me"
T0 = 1_700_000_000_000_000_000


def raw_socket(sport: int, pid: int, comm: str) -> dict[str, Any]:
    return records.RawSocket(
        observer=NODE, time_ns=T0, event="connect", proto=6, src="127.0.0.1", sport=sport,
        dst="192.0.2.80", dport=443, pid=pid, tid=pid, comm=comm,
    ).to_wire()  # fmt: skip


def raw_flow(proto: int, sport: int, dst: str, dport: int) -> dict[str, Any]:
    return records.RawFlow(
        observer=NODE, start_ns=T0, end_ns=T0 + 10**9, end_reason="active_timeout",
        proto=proto, src="127.0.0.1", dst=dst, sport=sport, dport=dport, bytes=1000,
        packets=10, rbytes=5000, rpackets=8, tcp_flags=0x12 if proto == 6 else 0,
        initiator=True,
    ).to_wire()  # fmt: skip


async def publish_raw(js: Any, schema: codec.Schema, subject: str, recs: list[dict]) -> None:
    batch = codec.encode(schema, recs)
    await js.publish(subject, batch.body, headers=batch.headers)


async def streams_created(js: Any, enricher: asyncio.subprocess.Process) -> None:
    """Wait until the enricher has created the streams; fail at once if it exits."""
    async with asyncio.timeout(TIMEOUT * 2):
        while True:
            if enricher.returncode is not None:
                assert enricher.stderr is not None
                problem = (await enricher.stderr.read()).decode().strip()
                raise AssertionError(f"the enricher exited ({enricher.returncode}): {problem}")
            try:
                await js.stream_info(subjects.STREAM_RAW)
                return
            except NotFoundError:
                await asyncio.sleep(0.1)


async def test_observe_shows_enriched_flows_of_a_running_pipeline(
    nats_srv: NatsServer, nc: Any
) -> None:
    js = nc.jetstream()
    for spec in subjects.STREAMS:
        with contextlib.suppress(Exception):
            await js.delete_stream(spec.name)
    # The enricher's default merge window (1.5 s): socket events published just before
    # a flow are joined even when this shared machine is slow.
    enricher = await asyncio.create_subprocess_exec(
        FLOWSCOPE, "enricher",
        env=_env(FLOWSCOPE_NATS_URL=nats_srv.url, FLOWSCOPE_HTTP_ADDRESS="127.0.0.1:0",
                 FLOWSCOPE_KUBERNETES_MODE="local", FLOWSCOPE_JOIN_MERGE_WINDOW="1.5",
                 FLOWSCOPE_LOG_LEVEL="warning", FLOWSCOPE_LOG_FORMAT="text"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await streams_created(js, enricher)
        udp_published = asyncio.Event()

        async def seen(msg: Any) -> None:
            if any(
                r["network.transport"] == "udp"
                for r in codec.decode(codec.FLOW, msg.headers, msg.data)
            ):
                udp_published.set()

        await nc.subscribe(subjects.FLOWS_ALL, cb=seen)
        await messaging.flush(nc)  # subscribed before the enricher publishes
        async with observe(nats_srv, "--port", "443", "--protocol", "tcp") as obs:
            await publish_raw(js, codec.RAW_SOCKET, subjects.raw_sockets(NODE),
                              [raw_socket(40000, 321, "curl"), raw_socket(40001, 322, "wget")])  # fmt: skip
            await publish_raw(js, codec.RAW_FLOW, subjects.raw_flows(NODE), [
                raw_flow(17, 5353, "192.0.2.53", 53),  # filtered out: udp, port 53
                raw_flow(6, 40000, "192.0.2.80", 443),
            ])  # fmt: skip
            first = await obs.until("curl")
            # The UDP record was published too (so observe had it to filter) ...
            await asyncio.wait_for(udp_published.wait(), TIMEOUT)
            # ... and a later matching flow shows without the UDP one having appeared.
            await publish_raw(js, codec.RAW_FLOW, subjects.raw_flows(NODE),
                              [raw_flow(6, 40001, "192.0.2.80", 443)])  # fmt: skip
            second = await obs.until("wget")
            assert await obs.interrupt() == 0
    finally:
        if enricher.returncode is None:
            enricher.terminate()
            await asyncio.wait_for(enricher.wait(), TIMEOUT)

    lines = [line.split("  ", 1)[1] for line in first + second]
    assert len(lines) == 2, lines
    assert lines[0].startswith("127.0.0.1:40000 [curl pid 321] → 192.0.2.80:443  tcp  1000 B")
    assert lines[1].startswith("127.0.0.1:40001 [wget pid 322] → 192.0.2.80:443  tcp  1000 B")
    assert all(line.endswith(f"SYN,ACK  on {NODE}") for line in lines)
