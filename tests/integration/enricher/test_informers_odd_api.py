"""An API server that goes silent, or answers in odd shapes: the informer reports how old
its metadata is, keeps serving it, and never ends (an ended informer stops the service)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from flowscope.enricher.watching import ApiHealth, Pulse

from tests.integration.enricher.conftest import informing, kube_api
from tests.integration.enricher.informers import Setup
from tests.support.fake_kube import FakeKube, Kind
from tests.support.waiting import eventually
from tests.unit.enricher import cluster


class OddKube(FakeKube):
    """The fake API, answering the next LISTs with the bodies in ``odd_lists``."""

    def __init__(self) -> None:
        super().__init__()
        self.odd_lists: list[Any] = []

    def _list(self, kind: Kind, request: web.Request) -> web.Response:
        if self.odd_lists:
            return web.json_response(self.odd_lists.pop(0))
        return super()._list(kind, request)

    def send_line(self, line: bytes) -> None:
        """One raw line on every open WATCH stream."""
        for watcher in self.watchers:
            watcher.queue.put_nowait(line + b"\n")


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[OddKube, Any]]:
    kube = OddKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api
        kube.speak_again()


async def test_silent_api_staleness_counts_from_the_last_word_and_recovers(
    fake: tuple[OddKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    async with informing(kube, api) as setup:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        kube.bookmark()  # the last word from the API, heard at 0 on the staleness clock
        await eventually(lambda: setup.metric("informer_events", type="BOOKMARK") == 1, within=10)
        kube.go_silent()  # the stream stays open; nothing more comes, no end at timeout
        setup.clock.now = 100.0  # far longer than a healthy 1 s WATCH stays quiet
        assert setup.health.staleness() == 100.0
        # The silent stream is given up (read timeout), not waited on for ever.
        await eventually(lambda: setup.metric("informer_errors") >= 1, within=20)
        setup.clock.now = 130.0
        assert setup.health.staleness() == 130.0  # from the last word, not from the failure
        assert setup.name_of("10.1.0.1") == "p0"  # last known metadata still served
        kube.speak_again()
        kube.add("pods", cluster.pod("back", ips=("10.1.0.2",)))
        await eventually(lambda: setup.name_of("10.1.0.2") == "back", within=10)
        assert setup.health.staleness() == 0.0


async def test_a_partition_is_stale_within_a_pulse_and_dead_watches_are_renewed_after(
    fake: tuple[OddKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    # Not informing(): the pulse runs until the informer's stopping event, so the informer
    # is stopped first and the pulse awaited after.
    setup = Setup(kube, api, watch_timeout=300)  # a quiet WATCH is healthy for 330 s
    pulse = Pulse(api, setup.health, [setup.informer], 0.2)
    pulsing = asyncio.create_task(pulse.run(setup.stopping))
    try:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        setup.clock.now = 50.0
        kube.bookmark()  # the informer's last word, at 50
        await eventually(lambda: setup.metric("informer_events", type="BOOKMARK") == 1, within=10)
        setup.clock.now = 60.0
        await eventually(lambda: setup.health.answered == 60.0, within=10)  # the pulse's
        kube.partition()
        setup.clock.now = 100.0
        # Noticed by the pulse, not after the WATCH's 330 s of allowed quiet; counted
        # from the API's last answer, at 60 (later than the informer's last word).
        await eventually(lambda: setup.health.staleness() == 40.0, within=10)
        assert setup.name_of("10.1.0.1") == "p0"  # last known metadata still served
        kube.speak_again()
        await eventually(lambda: setup.health.staleness() == 0.0, within=10)
        # The stream open before the partition is dead: only a renewed WATCH sees this.
        kube.add("pods", cluster.pod("back", ips=("10.1.0.2",)))
        await eventually(lambda: setup.name_of("10.1.0.2") == "back", within=10)
        assert setup.watches()[-1]["resourceVersion"] == setup.watches()[0]["resourceVersion"]
    finally:
        await setup.stop()
        await asyncio.wait_for(pulsing, 5)


async def test_the_pulse_counts_any_answer_below_500_and_no_answer_as_its_problem(
    fake: tuple[OddKube, Any],
) -> None:
    kube, api = fake
    pulse = Pulse(api, ApiHealth(), [], 0.2)
    assert await pulse.ask() == ""
    kube.version_status = 403  # RBAC refusing it still proves the API is there
    assert await pulse.ask() == ""
    kube.version_status = 503  # a proxy or load balancer with no API behind it
    assert await pulse.ask() == "/version answered HTTP 503"
    kube.version_status = 200
    kube.go_silent()
    assert "Timeout" in await pulse.ask()
    kube.speak_again()
    await kube.stop()
    assert "Connect call failed" in await pulse.ask()


@pytest.mark.parametrize(
    "envelope",
    [
        {"kind": "PodList", "metadata": ["x"], "items": []},
        {"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": 5},
        {"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": {"a": {}}},
        {"kind": "PodList", "metadata": {"resourceVersion": ["1"]}, "items": []},
        {
            "kind": "PodList",
            "metadata": {"resourceVersion": "1", "continue": {"a": 1}},
            "items": [],
        },
        [{"kind": "PodList"}],
    ],
    ids=[
        "metadata-list",
        "items-int",
        "items-object",
        "version-list",
        "continue-object",
        "not-an-object",
    ],
)
async def test_odd_list_envelope_is_an_api_error_retried(
    fake: tuple[OddKube, Any], envelope: Any
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    kube.odd_lists = [envelope, envelope]
    async with informing(kube, api) as setup:
        await asyncio.wait_for(setup.informer.synced.wait(), 10)  # the third LIST is fine
        assert setup.metric("informer_errors") == 2
        assert setup.name_of("10.1.0.1") == "p0"
        assert setup.health.staleness() == 0.0


@pytest.mark.parametrize(
    "line",
    [b"[1, 2]", b'"ADDED"', b'{"type": "ADDED", "object": [1]}', b'{"type": "ADDED"}'],
    ids=["list", "string", "object-a-list", "no-object"],
)
async def test_odd_watch_line_is_an_api_error_retried(
    fake: tuple[OddKube, Any], line: bytes
) -> None:
    kube, api = fake
    async with informing(kube, api) as setup:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        kube.send_line(line)
        await eventually(lambda: setup.metric("informer_errors") >= 1, within=10)
        kube.add("pods", cluster.pod("after", ips=("10.1.0.3",)))
        await eventually(lambda: setup.name_of("10.1.0.3") == "after", within=10)


async def test_odd_resource_version_in_an_event_keeps_the_resume_point(
    fake: tuple[OddKube, Any],
) -> None:
    kube, api = fake
    async with informing(kube, api) as setup:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        version = str(kube.version)
        odd = cluster.pod("odd-version", ips=("10.1.0.4",))
        odd["metadata"]["resourceVersion"] = {"not": "a version"}
        kube.send_line(orjson.dumps({"type": "ADDED", "object": odd}))
        await eventually(lambda: setup.name_of("10.1.0.4") == "odd-version", within=10)
        kube.end_watches()
        await eventually(lambda: len(setup.watches()) >= 2, within=10)
        assert setup.watches()[-1]["resourceVersion"] == version
        kube.add("pods", cluster.pod("after", ips=("10.1.0.5",)))
        await eventually(lambda: setup.name_of("10.1.0.5") == "after", within=10)
        assert setup.metric("informer_errors") == 0
