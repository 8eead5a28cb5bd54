"""KUBECONFIG listing several files: merged as kubectl merges them — the first file to set
a name (cluster, user, context) wins, and the current-context is the first file's that
sets one — against the fake API over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from flowscope.core import config
from flowscope.enricher import service
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.settings import Settings
from flowscope.enricher.watching import ApiHealth, Informer, WatchSettings, resources
from prometheus_client import CollectorRegistry

from tests.support.fake_kube import TOKEN, FakeKube
from tests.unit.enricher import cluster

NOWHERE = "http://127.0.0.1:9"  # discard port: nothing answers there


def write(path: Path, **doc: Any) -> str:
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", **doc}))
    return str(path)


def files(tmp_path: Path, api_url: str) -> tuple[str, str]:
    """The context and cluster in one file, the user (and a shadowed cluster of the same
    name, and a current-context of its own) in the second."""
    first = write(
        tmp_path / "first",
        **{"current-context": "fake",
           "clusters": [{"name": "fake", "cluster": {"server": api_url}}],
           "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]},
    )  # fmt: skip
    second = write(
        tmp_path / "second",
        **{"current-context": "other",
           "clusters": [{"name": "fake", "cluster": {"server": NOWHERE}},
                        {"name": "elsewhere", "cluster": {"server": NOWHERE}}],
           "contexts": [{"name": "other", "context": {"cluster": "elsewhere", "user": "tester"}}],
           "users": [{"name": "tester", "user": {"token": TOKEN}}]},
    )  # fmt: skip
    return first, second


async def synced_through(api: Any, kube: FakeKube) -> bool:
    """Whether a pods informer over ``api`` completes its first LIST from ``kube``."""
    pods = next(r for r in resources(()) if r.name == "pods")
    stopping = asyncio.Event()
    informer = Informer(api, pods, Inventory(60), Metrics.create(CollectorRegistry()),
                        ApiHealth(), WatchSettings(100, 30, 0.3))  # fmt: skip
    task = asyncio.create_task(informer.run(stopping))
    try:
        await asyncio.wait_for(informer.synced.wait(), 10)
        return True
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)


async def test_kubeconfig_files_merge_as_kubectl_merges_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube()
    await kube.start()
    kube.add("pods", cluster.pod("p1"))
    first, second = files(tmp_path, kube.url)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([first, str(tmp_path / "missing"), second]))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = config.load(Settings, {"kubernetes.mode": "kubernetes"}, env={})
    api = await service.kube_client(settings)
    try:
        assert api.configuration.host == kube.url  # the first file's context and cluster
        assert await synced_through(api, kube)  # with the second file's user (its token)
    finally:
        kube.end_watches()
        await api.close()
        await kube.stop()


async def test_an_empty_kubeconfig_file_in_the_list_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube()
    await kube.start()
    empty = tmp_path / "empty"
    empty.write_text("")
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(empty), str(kubeconfig)]))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = config.load(Settings, {"kubernetes.mode": "kubernetes"}, env={})
    api = await service.kube_client(settings)
    try:
        assert await synced_through(api, kube)
    finally:
        kube.end_watches()
        await api.close()
        await kube.stop()


def test_kubeconfig_list_names_the_first_current_context_file_last(tmp_path: Path) -> None:
    first, second = files(tmp_path, "http://127.0.0.1:1")
    plain = config.load(Settings, {}, env={})
    env = {"KUBECONFIG": os.pathsep.join([first, second, first])}
    assert service.kubeconfig_path(plain, env) == os.pathsep.join([first, second, first])
    assert service.kubeconfig_path(plain, {"KUBECONFIG": second}) == second
