"""A WATCH whose only event before its 410 is a BOOKMARK without resourceVersion made no
progress: the re-LISTs it leads to back off as after bare 410s, not loop at once."""

from __future__ import annotations

import json
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


class VersionlessKube(FakeKube):
    """The fake API, answering every WATCH with a BOOKMARK that carries no resourceVersion
    and then an ERROR event with a 410 Expired Status."""

    async def _watch(self, kind: Kind, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        bookmark = {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": {}}
        expired = fake_kube.status(410, "Expired", "too old resource version")
        for change, obj in (("BOOKMARK", bookmark), ("ERROR", expired)):
            await response.write(json.dumps({"type": change, "object": obj}).encode() + b"\n")
        await response.write_eof()
        return response


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[VersionlessKube, Any]]:
    kube = VersionlessKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api


async def test_a_bookmark_without_resource_version_does_not_reset_the_relist_backoff(
    fake: tuple[VersionlessKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    async with informing(kube, api, watch_timeout=30, backoff_max=3600.0) as setup:
        # Backoffs of 0.2, 0.4, 0.8, 1.6 s ... after the first: the informer soon waits
        # for its sixth re-LIST far longer than this test lasts.
        await eventually(lambda: setup.informer.relists_in_a_row >= 3, within=20)
        assert setup.inventory.resolve("10.1.0.1").kind == "pod"
        relists = setup.metric("relists", reason="expired")
        assert relists == setup.informer.relists_in_a_row
