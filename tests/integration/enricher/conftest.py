"""Helpers for the enricher's integration tests: replicas in-process, raw in, records out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from flowscope.core import codec, config, messaging, subjects
from flowscope.core.runtime import Runtime, serve
from flowscope.enricher import service
from flowscope.enricher.settings import Settings
from nats.aio.client import Client as NATS

from tests.integration.enricher.informers import Setup
from tests.support.fake_kube import FakeKube
from tests.support.nats_server import NatsServer


@contextlib.asynccontextmanager
async def kube_api(kube: FakeKube, tmp_path: Path) -> AsyncIterator[Any]:
    """The enricher's Kubernetes client for a fake API started here (stopped after)."""
    await kube.start()
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    api = await service.kube_client(config.load(Settings, {"kubeconfig": str(kubeconfig)}, env={}))
    try:
        yield api
    finally:
        kube.end_watches()
        await api.close()
        await kube.stop()


@contextlib.asynccontextmanager
async def informing(kube: FakeKube, api: Any, **options: Any) -> AsyncIterator[Setup]:
    """An informer of pods over ``kube`` (a :class:`Setup` built with ``options``) for the
    block, stopped after it; what ended the informer is raised there."""
    setup = Setup(kube, api, **options)
    try:
        yield setup
    finally:
        await setup.stop()


def make_settings(url: str, **overrides: Any) -> Settings:
    """Enricher settings for a test: fast windows, no fixed HTTP port."""
    args: dict[str, Any] = {
        "nats.url": url,
        "http_address": "127.0.0.1:0",
        "log_format": "text",
        "join.merge_window": 0.3,
        "consumer.ack_wait": 5,
        "drain_timeout": 5,
        "kubernetes.mode": "local",
    }
    args.update(overrides)
    return config.load(Settings, {k: str(v) for k, v in args.items()}, env={})


@dataclass
class Replica:
    """One enricher running in this event loop."""

    task: asyncio.Task[int]
    runtime: list[Runtime] = field(default_factory=list)

    @property
    def rt(self) -> Runtime:
        return self.runtime[0]

    async def ready(self, within: float = 20) -> None:
        async def wait() -> None:
            # Health has no event to wait on: poll it (tests only).
            while not self.runtime or not self.rt.health.ready:
                if self.task.done():
                    raise AssertionError(f"enricher ended: {self.task.result()}")
                await asyncio.sleep(0.05)

        await asyncio.wait_for(wait(), within)

    def _consuming(self) -> bool:
        if not self.runtime:
            return False
        health = self.rt.health
        return health.ready and health.checks.get("consumers", (False, ""))[0]

    async def stop(self) -> int:
        if self.runtime:
            self.rt.stop()
        return await asyncio.wait_for(self.task, 15)


def start_replica(settings: Settings) -> Replica:
    captured: list[Runtime] = []

    async def body(rt: Runtime) -> None:
        captured.append(rt)
        await service.body(rt, settings)

    task = asyncio.create_task(serve("enricher", settings.runtime, body))
    return Replica(task, captured)


async def reset_streams(nc: NATS) -> None:
    """Delete flowscope's streams (and so their consumers): each test starts clean."""
    js = nc.jetstream()
    for spec in subjects.STREAMS:
        with contextlib.suppress(Exception):
            await js.delete_stream(spec.name)


async def publish_raw(nc: NATS, schema: codec.Schema, subject: str, records: list[dict]) -> None:
    """Publish a raw batch to JetStream (as the collector does)."""
    batch = codec.encode(schema, records)
    await nc.jetstream().publish(subject, batch.body, headers=batch.headers)


class Collected:
    """Every enriched message published under a subject pattern."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, str], list[dict[str, Any]]]] = []
        self.arrived = asyncio.Event()

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for _, _, recs in self.messages for r in recs]

    def by_subject(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for subject, _, recs in self.messages:
            out.setdefault(subject, []).extend(recs)
        return out

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], within: float = 15
    ) -> list[dict[str, Any]]:
        async def wait() -> None:
            while not predicate(self.records):
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(wait(), within)
        return self.records


async def collect(nc: NATS, pattern: str, schema: codec.Schema) -> Collected:
    collected = Collected()

    async def on_message(msg: Any) -> None:
        collected.messages.append(
            (msg.subject, dict(msg.headers or {}), codec.decode(schema, msg.headers, msg.data))
        )
        collected.arrived.set()

    await nc.subscribe(pattern, cb=on_message)
    await messaging.flush(nc)  # subscribed before another client publishes
    return collected


@pytest.fixture
async def clean_nc(nats_srv: NatsServer) -> AsyncIterator[NATS]:
    """A client to the session server with flowscope's streams deleted."""
    client = await nats.connect(nats_srv.url)
    await reset_streams(client)
    yield client
    await client.drain()


def raw_flow(observer: str, src: str, dst: str, sport: int, dport: int, **kw: Any) -> dict:
    record = {
        "observer": observer, "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_001_000_000_000, "end_reason": "active_timeout", "proto": 6,
        "src": src, "dst": dst, "sport": sport, "dport": dport, "bytes": 1000, "packets": 10,
        "rbytes": 5000, "rpackets": 8, "tcp_flags": 0x12,
    }  # fmt: skip
    record.update(kw)
    return record


def raw_socket(observer: str, event: str, src: str, sport: int, dst: str, dport: int,
               pid: int, comm: str, container_id: str = "", proto: int = 6) -> dict:  # fmt: skip
    return {
        "observer": observer, "time_ns": 1_700_000_000_000_000_000, "event": event,
        "proto": proto, "src": src, "sport": sport, "dst": dst, "dport": dport, "pid": pid,
        "tid": pid, "comm": comm, "container_id": container_id,
    }  # fmt: skip
