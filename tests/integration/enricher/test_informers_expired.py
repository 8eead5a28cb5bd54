"""An API server that expires every resourceVersion it hands out: the informer's LIST →
WATCH → 410 loop backs off instead of re-LISTing as fast as the server answers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.enricher.conftest import informing, kube_api
from tests.support import fake_kube
from tests.support.fake_kube import FakeKube, Kind
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

BACKOFF_MAX = 0.8


class ExpiringKube(FakeKube):
    """The fake API, answering the next ``expiring`` WATCHes with an ERROR event carrying
    a 410 Expired Status, as a server does whose history is compacted as fast as it
    is read; it notes when each LIST and each expired WATCH was answered."""

    def __init__(self) -> None:
        super().__init__()
        self.expiring = 0
        self.list_times: list[float] = []
        self.expired_times: list[float] = []

    def _list(self, kind: Kind, request: web.Request) -> web.Response:
        self.list_times.append(time.monotonic())
        return super()._list(kind, request)

    async def _watch(self, kind: Kind, request: web.Request) -> web.StreamResponse:
        if self.expiring <= 0:
            return await super()._watch(kind, request)
        self.expiring -= 1
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        expired = fake_kube.status(410, "Expired", "too old resource version")
        await response.write(json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n")
        await response.write_eof()
        self.expired_times.append(time.monotonic())
        return response


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[ExpiringKube, Any]]:
    kube = ExpiringKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api


async def test_consecutive_410s_back_off_and_a_watch_event_resets_them(
    fake: tuple[ExpiringKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    kube.expiring = 5
    async with informing(kube, api, watch_timeout=30, backoff_max=BACKOFF_MAX) as setup:
        await eventually(lambda: kube.watch_count("pods") == 1, within=20)  # the 6th WATCH
        # one LIST per 410
        assert setup.metric("relists", reason="expired") == 5 and len(kube.list_times) == 6
        gaps = [b - a for a, b in zip(kube.list_times, kube.list_times[1:], strict=False)]
        # The first 410 is LISTed again at once; from the second on, after the backoff.
        waits = [0.2, 0.4, 0.8, BACKOFF_MAX]
        assert all(gap >= wait - 0.05 for gap, wait in zip(gaps[1:], waits, strict=True)), gaps
        # A watch event applied: the next 410 is a first one again, LISTed at once.
        kube.add("pods", cluster.pod("fresh", ips=("10.1.0.2",)))
        await eventually(lambda: setup.inventory.resolve("10.1.0.2").kind == "pod", within=10)
        kube.expiring = 1
        kube.end_watches()
        await eventually(lambda: len(kube.list_times) == 7, within=10)
        assert kube.list_times[-1] - kube.expired_times[-1] < BACKOFF_MAX / 2
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        assert setup.metric("relists", reason="expired") == 6 and len(kube.list_times) == 7
