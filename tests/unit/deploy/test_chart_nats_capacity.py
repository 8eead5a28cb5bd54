"""Streams the bundled NATS can hold: values it would refuse them on fail the install.

Every component creates flowscope's streams at start-up with ``nats.stream.*`` and stops
when nats-server refuses them. Before, ``nats.config.jetstream.enabled=false`` installed
a NATS without JetStream, ``nats.stream.replicas=3`` installed over the
bundled NATS, one server unless its cluster is enabled, which refuses any stream with
more than one replica; and docs/deploy.md's example asked for four streams of 10 GiB on
the bundled 10Gi file store, which refuses the second. Every pod of every component then
exited at start-up. The servers here are real; a single one stands for each server of a
cluster, which holds one replica of every stream.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from flowscope.core import config, messaging, subjects
from nats.js.errors import ServiceUnavailableError

from tests.support import nats_server
from tests.support.chart_templates import TemplateFailure, render_objects
from tests.support.deploying import REPO, settings_class

CHART = REPO / "deploy" / "helm" / "flowscope"
DOCS = REPO / "docs" / "deploy.md"
CLUSTER = {"nats": {"config": {"cluster": {"enabled": True, "replicas": 3}}}}
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
# nats-server's JetStream store without max_file_store: 75% of the disk's free space
# (what the subchart sets when it sets the volume's size instead is more): the least a
# volume of a given size holds.
STORE_SHARE = 0.75


def stream_env(values: dict[str, Any]) -> dict[str, str]:
    """The enricher's FLOWSCOPE_NATS_STREAM_* as the chart renders them for ``values``."""
    (enricher,) = [
        o for o in render_objects(CHART, values)
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "enricher"
    ]  # fmt: skip
    (container,) = enricher["spec"]["template"]["spec"]["containers"]
    return {
        e["name"]: e["value"]
        for e in container["env"]
        if e["name"].startswith("FLOWSCOPE_NATS_STREAM_")
    }


async def _streams_made(url: str, env: dict[str, str]) -> bool:
    settings = config.load(settings_class("enricher"), {}, env=env)
    nc = await nats.connect(url)
    try:
        await messaging.ensure_streams(nc.jetstream(), settings.nats)
    except (messaging.StreamRefusedError, ServiceUnavailableError):  # refused; no JetStream
        return False
    finally:
        await nc.close()
    return True


def streams_made(
    env: dict[str, str], tmp_path: Path, max_file_store: int = 0, jetstream: bool = True
) -> bool:
    """Whether a real server (with that JetStream store limit, 0: none) takes the
    streams as ``env`` configures them."""
    extra = []
    if max_file_store:
        conf = tmp_path / "jetstream.conf"
        conf.write_text(f"jetstream {{ max_file_store: {max_file_store} }}\n")
        extra = ["-c", str(conf)]
    server = nats_server.start(store_dir=str(tmp_path / "store"), extra=extra, jetstream=jetstream)
    try:
        return asyncio.run(_streams_made(server.url, env))
    finally:
        server.close()


def test_the_bundled_nats_without_jetstream_fails_the_install(tmp_path: Path) -> None:
    with pytest.raises(TemplateFailure, match=r"nats\.config\.jetstream\.enabled is false"):
        stream_env({"nats": {"config": {"jetstream": {"enabled": False}}}})
    assert not streams_made({}, tmp_path, jetstream=False)
    assert streams_made({}, tmp_path)


@pytest.mark.parametrize("replicas", ["", 0, 1, "1", "-0", 2, 3, "3", " +05 ", "0_3"], ids=repr)
def test_the_bundled_single_server_takes_the_replicas_the_chart_installs(
    replicas: Any, tmp_path: Path
) -> None:
    try:
        stream_env({"nats": {"stream": {"replicas": replicas}}})
    except TemplateFailure as failure:
        assert "nats.config.cluster.enabled" in str(failure)
        installed = False
    else:
        installed = True
    given = {"FLOWSCOPE_NATS_STREAM_REPLICAS": str(replicas)} if str(replicas).strip() else {}
    assert installed == streams_made(given, tmp_path)


@pytest.mark.parametrize(("replicas", "installs"), [(3, True), ("3", True), (4, False), (5, False)])
def test_a_bundled_cluster_takes_as_many_replicas_as_it_has_servers(
    replicas: Any, installs: bool
) -> None:
    values = {**CLUSTER, "nats": {**CLUSTER["nats"], "stream": {"replicas": replicas}}}
    if installs:
        assert stream_env(values)["FLOWSCOPE_NATS_STREAM_REPLICAS"] == str(replicas)
    else:
        with pytest.raises(TemplateFailure, match=r"nats\.config\.cluster\.replicas"):
            stream_env(values)


def test_an_external_nats_is_not_second_guessed() -> None:
    external = {"enabled": False, "externalUrl": "nats://nats.example:4222"}
    unchecked = {"stream": {"replicas": 3}, "config": {"jetstream": {"enabled": False}}}
    assert stream_env({"nats": {**external, **unchecked}})["FLOWSCOPE_NATS_STREAM_REPLICAS"] == "3"


def documented_limits() -> dict[str, Any]:
    """The values of docs/deploy.md's example of stream limits (its ``--set`` flags)."""
    blocks = re.findall(r"```\n(.*?)```", DOCS.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if "nats.stream.maxBytes" in b]
    values: dict[str, Any] = {}
    for path, text in re.findall(r"--set ([\w.]+)=(\S+)", block):
        *parents, key = path.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = yaml.safe_load(text)
    return values


def volume_bytes(values: dict[str, Any]) -> int:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    size = (values["nats"].get("config", {}).get("jetstream", {}).get("fileStore", {})
            .get("pvc", {}).get("size", defaults["nats"]["config"]["jetstream"]["fileStore"]
                               ["pvc"]["size"]))  # fmt: skip
    number, unit = re.fullmatch(r"(\d+)(\w+)", size).groups()  # type: ignore[union-attr]
    return int(number) * UNITS[unit]


def test_the_documented_stream_limits_install_and_fit_the_bundled_store(tmp_path: Path) -> None:
    values = documented_limits()
    env = stream_env(values)
    assert int(env["FLOWSCOPE_NATS_STREAM_MAX_BYTES"]) * len(subjects.STREAMS) > 10 << 30
    # One server of the cluster: one replica of each stream.
    single = {**env, "FLOWSCOPE_NATS_STREAM_REPLICAS": "1"}
    assert streams_made(single, tmp_path, int(volume_bytes(values) * STORE_SHARE))
