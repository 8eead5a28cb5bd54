"""Watch ERROR events other than 410: a resourceVersion "too large" (etcd restored from a
backup) and an ERROR repeated from the same resourceVersion both end in a fresh LIST,
and a WATCH answered 200 whose stream then fails is no word from the API (staleness)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.integration.enricher.conftest import informing, kube_api
from tests.support import fake_kube
from tests.support.fake_kube import FakeKube, Kind
from tests.support.waiting import eventually
from tests.unit.enricher import cluster

GRACE = 60.0


class ErroringKube(FakeKube):
    """The fake API, answering WATCHes with HTTP 200 and then an ERROR event carrying
    ``error`` (None: as usual); each such WATCH waits for :meth:`let_one` first, so the
    test knows what the informer has heard when."""

    def __init__(self) -> None:
        super().__init__()
        self.error: dict[str, Any] | None = None
        self._gate = asyncio.Semaphore(0)

    def let_one(self) -> None:
        self._gate.release()

    async def _watch(self, kind: Kind, request: web.Request) -> web.StreamResponse:
        if self.error is None:
            return await super()._watch(kind, request)
        await self._gate.acquire()
        if self.error is None:  # the errors stopped while this WATCH waited
            return await super()._watch(kind, request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(orjson.dumps({"type": "ERROR", "object": self.error}) + b"\n")
        await response.write_eof()
        return response


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[ErroringKube, Any]]:
    kube = ErroringKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api


async def test_the_fake_answers_a_too_large_version_as_the_watch_cache_does(
    fake: tuple[ErroringKube, Any],
) -> None:
    kube, _ = fake
    url = f"{kube.url}/api/v1/pods?watch=true&resourceVersion={kube.version + 5}"
    headers = {"Authorization": f"Bearer {fake_kube.TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200  # the stream opens; the error is its only event
        lines = (await resp.read()).splitlines()
    assert [orjson.loads(line) for line in lines] == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Timeout: Too large resource version: 105, current: 100",
        "reason": "Timeout", "code": 504,
        "details": {"causes": [{"reason": "ResourceVersionTooLarge",
                                "message": "Too large resource version"}],
                    "retryAfterSeconds": 1}}}]  # fmt: skip


async def test_etcd_restored_from_a_backup_relists_once_and_recovers(
    fake: tuple[ErroringKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("kept", ips=("10.1.0.1",)))
    backup = kube.snapshot()
    kube.add("pods", cluster.pod("lost-a", ips=("10.1.0.2",)))  # gone in the restore
    kube.add("pods", cluster.pod("lost-b", ips=("10.1.0.3",)))
    kube.add("pods", cluster.pod("lost-c", ips=("10.1.0.4",)))
    async with informing(kube, api, watch_timeout=30, deleted_grace=GRACE) as setup:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        held = kube.version  # the informer's resourceVersion: above the backup's
        kube.restore(backup)
        # Created after the restore, below the version the informer holds: only a LIST
        # sees it (a WATCH from the held version is answered "too large").
        kube.add("pods", cluster.pod("after", ips=("10.1.0.9",)))
        assert kube.version < held
        await eventually(lambda: setup.name_of("10.1.0.9") == "after", within=10)
        assert setup.metric("relists", reason="too_large") == 1
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        assert setup.watches()[-1]["resourceVersion"] == str(kube.version)
        assert setup.lists() == 2 and setup.health.staleness() == 0.0
        # The pods lost in the restore are gone after their grace; the rest is served.
        assert setup.name_of("10.1.0.2") == "lost-a"
        setup.clock.now += GRACE + 1
        setup.inventory.sweep()
        assert [setup.name_of(f"10.1.0.{i}") for i in (1, 2, 3, 4, 9)] == [
            "kept", None, None, None, "after"]  # fmt: skip
        kube.add("pods", cluster.pod("later", ips=("10.1.0.10",)))  # watched again
        await eventually(lambda: setup.name_of("10.1.0.10") == "later", within=10)
        assert setup.metric("relists", reason="too_large") == 1


async def test_a_watch_error_repeated_from_one_version_relists_and_is_no_word_heard(
    fake: tuple[ErroringKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    kube.error = fake_kube.status(500, "InternalError", "etcdserver: no leader")
    # the LIST is heard at 0 on the clock
    async with informing(kube, api, watch_timeout=30, deleted_grace=GRACE) as setup:
        await asyncio.wait_for(setup.informer.synced.wait(), 10)
        setup.clock.now = 50.0
        kube.let_one()  # answered 200, then its ERROR: nothing learnt since the LIST
        await eventually(lambda: setup.metric("informer_errors") == 1, within=10)
        assert setup.health.staleness() == 50.0
        assert "watch ERROR 500" in setup.health.refusals()
        assert setup.name_of("10.1.0.1") == "p0"  # last known metadata still served
        kube.let_one()
        await eventually(lambda: setup.metric("informer_errors") == 2, within=10)
        assert setup.lists() == 1 and setup.health.staleness() == 50.0
        kube.add("pods", cluster.pod("meanwhile", ips=("10.1.0.2",)))
        kube.let_one()  # the third from the same version: LIST again
        await eventually(lambda: setup.metric("relists", reason="watch_errors") == 1, within=10)
        await eventually(lambda: setup.name_of("10.1.0.2") == "meanwhile", within=10)
        assert setup.lists() == 2 and setup.health.staleness() == 0.0
        kube.error = None
        kube.let_one()  # the WATCH held since the LIST: as usual now
        kube.add("pods", cluster.pod("after", ips=("10.1.0.3",)))
        await eventually(lambda: setup.name_of("10.1.0.3") == "after", within=10)
        assert setup.metric("relists", reason="watch_errors") == 1
