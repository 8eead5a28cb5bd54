"""A kubeconfig's credentials rotated while the enricher runs: the token in its
``tokenFile`` replaced, the API taking only the new one (the old answered 401). The
enricher's client reads the credentials again (``service.kube_client``), so the informers
recover by themselves; a token file that cannot be read keeps the token held."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from flowscope.core import config
from flowscope.enricher import service
from flowscope.enricher.settings import Settings

from tests.integration.enricher.informers import Setup
from tests.support import fake_kube
from tests.support.fake_kube import FakeKube
from tests.support.waiting import eventually
from tests.unit.enricher import cluster


def kubeconfig_with_token_file(fake: FakeKube, path: Path, token_file: Path) -> Path:
    """A kubeconfig whose user's token is read from ``token_file`` (as a projected
    service account token is mounted)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "tester", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }))  # fmt: skip
    return path


@pytest.fixture
async def rotating(tmp_path: Path) -> AsyncIterator[tuple[FakeKube, Path, Any]]:
    """The fake API, the token file, and a client reading the credentials again before
    every request (the service does so every minute)."""
    fake = FakeKube()
    await fake.start()
    token = tmp_path / "token"
    token.write_text(fake_kube.TOKEN)
    kubeconfig = kubeconfig_with_token_file(fake, tmp_path / "kubeconfig", token)
    settings = config.load(Settings, {"kubeconfig": str(kubeconfig)}, env={})
    api = await service.kube_client(settings, credentials_every=0)
    yield fake, token, api
    fake.end_watches()
    await api.close()
    await fake.stop()


async def test_a_rotated_token_file_is_read_again_and_the_informer_recovers(
    rotating: tuple[FakeKube, Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, token, api = rotating
    fake.add("pods", cluster.pod("web", ips=("10.1.0.5",)))
    setup = Setup(fake, api)
    try:
        await eventually(lambda: setup.name_of("10.1.0.5") == "web", within=10, what="synced")
        # The API's credentials rotate: the token held is refused from now on.
        monkeypatch.setattr(fake_kube, "TOKEN", "rotated-token")
        fake.end_watches()
        await eventually(lambda: "401" in setup.health.refusals(), within=10, what="refused")
        assert setup.name_of("10.1.0.5") == "web"  # the last known metadata still serves
        token.write_text("rotated-token")  # the new token is mounted
        fake.add("pods", cluster.pod("db", ips=("10.1.0.6",)))
        await eventually(lambda: setup.name_of("10.1.0.6") == "db", within=10, what="recovered")
        assert setup.health.refusals() == ""
    finally:
        await setup.stop()


async def test_an_unreadable_token_file_keeps_the_token_held(
    rotating: tuple[FakeKube, Path, Any],
) -> None:
    fake, token, api = rotating
    fake.add("pods", cluster.pod("web", ips=("10.1.0.5",)))
    setup = Setup(fake, api)
    try:
        await eventually(lambda: setup.name_of("10.1.0.5") == "web", within=10, what="synced")
        token.unlink()  # mid-rotation: the file briefly gone
        fake.end_watches()
        fake.add("pods", cluster.pod("db", ips=("10.1.0.6",)))
        await eventually(lambda: setup.name_of("10.1.0.6") == "db", within=10, what="watched")
        assert setup.metric("informer_errors") == 0  # every request still authorised
    finally:
        await setup.stop()
