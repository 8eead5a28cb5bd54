"""Elasticsearch credential files (mounted Secrets) are read again when they change.

Kubernetes updates a mounted Secret in place (a new file behind the ``..data`` symlink):
a fixed or rotated key must be used without restarting the exporter, and the records
refused meanwhile must all be stored once it is.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.ecs import EcsMapper
from flowscope.exporter.elasticsearch import BackendError, ElasticsearchSink
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.settings import ElasticsearchSettings, Settings
from flowscope.exporter.sink import Kind
from prometheus_client import CollectorRegistry

from tests.support.fake_elasticsearch import FakeElasticsearch
from tests.support.waiting import eventually
from tests.unit.exporter.sample import flow

FLOWS = "logs-flowscope.flows-default"


class MountedSecret:
    """A Secret volume as the kubelet lays it out: ``<key>`` → ``..data/<key>``,
    ``..data`` → a timestamped directory, swapped atomically on each update."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.path = root / key
        self._key = key
        self._version = 0

    def write(self, value: str) -> None:
        self._version += 1
        version = self.root / f"..{self._version}"
        version.mkdir()
        (version / self._key).write_text(value + "\n")
        (self.root / "..data_tmp").symlink_to(version.name)
        os.replace(self.root / "..data_tmp", self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self._key}")


def es_sink(url: str, **settings: object) -> ElasticsearchSink:
    return ElasticsearchSink(
        ElasticsearchSettings(url=url, **settings),  # type: ignore[arg-type]
        EcsMapper(),
        ExporterMetrics.create(CollectorRegistry()),
        backoff=(0.05, 0.2),
    )


@pytest.mark.parametrize("setting", ["api_key_file", "password_file"])
@pytest.mark.parametrize("update", ["kubelet", "in place"])
async def test_a_fixed_credential_file_is_used_without_a_restart(
    setting: str, update: str, tmp_path: Path
) -> None:
    """Before, the file was read once: the sink retried 401 for ever with the old value."""
    es = await FakeElasticsearch().start()
    credentials: dict[str, object] = {}
    if setting == "api_key_file":
        es.api_key = "cmlnaHQ="
    else:
        es.basic_auth = ("flowscope", "cmlnaHQ=")
        credentials["username"] = "flowscope"
    secret = MountedSecret(tmp_path, "secret")
    secret.write("d3Jvbmc=")  # wrong
    sink = es_sink(es.url, **credentials, **{setting: str(secret.path)})
    try:
        with pytest.raises(BackendError, match="401"):
            await sink.start()
        records = [flow(i) for i in range(50)]
        export = asyncio.create_task(sink.export(Kind.FLOW, records))
        await eventually(lambda: es.refused >= 4, within=10, what="401s with the wrong value")
        if update == "kubelet":
            secret.write("cmlnaHQ=")
        else:
            secret.path.write_text("cmlnaHQ=\n")
        result = await asyncio.wait_for(export, 10)
        await sink.start()
    finally:
        await sink.shutdown()
        await sink.close()
        await es.stop()
    assert not result.deferred and not result.rejected
    assert len(es.stored(FLOWS)) == 50
    assert set(es.creates.values()) == {1}


async def test_an_unreadable_or_unusable_credential_file_keeps_the_last_value(
    tmp_path: Path,
) -> None:
    """The file vanishing for a moment (a Secret being replaced), empty while it is
    written, or rotated to a value with a control character inside (which could not be
    sent) must not drop the key."""
    es = await FakeElasticsearch(api_key="cmlnaHQ=").start()
    key_file = tmp_path / "api-key"
    key_file.write_text("cmlnaHQ=\n")
    sink = es_sink(es.url, api_key_file=str(key_file))
    try:
        await sink.start()
        key_file.unlink()
        result = await asyncio.wait_for(sink.export(Kind.FLOW, [flow(1)]), 10)
        key_file.write_text("\n")  # being written: empty for a moment
        second = await asyncio.wait_for(sink.export(Kind.FLOW, [flow(2)]), 10)
        key_file.write_text("cmlnaHQ=\nX-Injected: 1\n")
        third = await asyncio.wait_for(sink.export(Kind.FLOW, [flow(3)]), 10)
    finally:
        await sink.shutdown()
        await sink.close()
        await es.stop()
    assert not result.deferred and not second.deferred and not third.deferred
    assert len(es.stored(FLOWS)) == 3
    assert es.refused == 0


@pytest.mark.parametrize("setting", ["api_key_file", "password_file"])
def test_a_credential_file_with_a_control_character_inside_stops_start_up(
    setting: str, tmp_path: Path
) -> None:
    """The final newline is removed; one inside could not be sent (an API key: aiohttp
    refused every request, "Forbidden control character") or is not the password."""
    secret = tmp_path / "secret"
    secret.write_text("hunter2\nX-Injected: 1\n")
    user = {"username": "elastic"} if setting == "password_file" else {}
    with pytest.raises(ConfigError) as e:
        es_sink("http://127.0.0.1:9", **{setting: str(secret)}, **user)
    assert f"FLOWSCOPE_ELASTICSEARCH_{setting.upper()}" in e.value.setting
    assert "hunter2" not in str(e.value)


async def test_a_username_from_the_environment_with_a_final_newline_authenticates() -> None:
    """``usernameKey`` and ``passwordKey`` of one Secret made with ``kubectl create secret
    --from-file`` both end in a newline; before, the password lost it and the username
    kept it, so Elasticsearch refused every request (401)."""
    es = await FakeElasticsearch().start()
    es.basic_auth = ("elastic", "s3cret")
    env = {
        "FLOWSCOPE_ELASTICSEARCH_URL": es.url,
        "FLOWSCOPE_ELASTICSEARCH_USERNAME": "elastic\n",
        "FLOWSCOPE_ELASTICSEARCH_PASSWORD": "s3cret\n",
    }
    settings = config.load(Settings, {}, env).elasticsearch
    sink = es_sink(es.url, username=settings.username, password=settings.password)
    try:
        await sink.start()
        result = await sink.export(Kind.FLOW, [flow(1)])
    finally:
        await sink.close()
        await es.stop()
    assert settings.username == "elastic"
    assert not result.deferred and not result.rejected
    assert len(es.stored(FLOWS)) == 1
    assert es.refused == 0


@pytest.mark.parametrize("inside", ["\n", "\r\nX-Injected: 1", "\t", "\x00"])
def test_a_username_with_a_control_character_inside_stops_start_up(inside: str) -> None:
    var = "FLOWSCOPE_ELASTICSEARCH_USERNAME"
    with pytest.raises(ConfigError) as e:
        config.load(Settings, {}, {var: f"elastic{inside}more"})
    assert e.value.setting == var
    assert "elastic" not in e.value.problem
