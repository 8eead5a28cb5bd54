"""The API answering again renews every informer, those waiting out an error backoff
grown while it did not included: they WATCH again at once, not after their backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from flowscope.enricher.watching import Pulse

from tests.integration.enricher.conftest import kube_api
from tests.integration.enricher.informers import Setup
from tests.support.fake_kube import FakeKube
from tests.support.waiting import eventually
from tests.unit.enricher import cluster


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Any]]:
    kube = FakeKube()
    async with kube_api(kube, tmp_path) as api:
        yield kube, api


async def test_an_informer_in_its_backoff_watches_again_once_the_api_answers(
    fake: tuple[FakeKube, Any],
) -> None:
    kube, api = fake
    kube.add("pods", cluster.pod("p0", ips=("10.1.0.1",)))
    # Not informing(): the pulse runs until the informer's stopping event, so the informer
    # is stopped first and the pulse awaited after.
    setup = Setup(kube, api, watch_timeout=300, backoff_max=60)
    pulse = Pulse(api, setup.health, [setup.informer], 0.2)
    pulsing = asyncio.create_task(pulse.run(setup.stopping))
    try:
        await eventually(lambda: kube.watch_count("pods") == 1, within=10)
        # No API behind the proxy: /version answers 503, the WATCH is refused.
        kube.version_status = 503
        kube.forbid("pods")
        await eventually(lambda: setup.health.unanswered_since is not None, within=10)
        # Six failures in a row: the informer now waits 6.4 s before its next WATCH.
        await eventually(lambda: setup.metric("informer_errors") >= 6, within=30)
        kube.allow("pods")
        kube.version_status = 200
        await eventually(lambda: setup.health.unanswered_since is None, within=5)
        # Renewed: it WATCHes again well before its backoff would have ended.
        await eventually(lambda: kube.watch_count("pods") == 1, within=3)
        kube.add("pods", cluster.pod("back", ips=("10.1.0.2",)))
        await eventually(lambda: setup.name_of("10.1.0.2") == "back", within=3)
        assert setup.watches()[-1]["resourceVersion"] == setup.watches()[0]["resourceVersion"]
    finally:
        await setup.stop()
        await asyncio.wait_for(pulsing, 5)
