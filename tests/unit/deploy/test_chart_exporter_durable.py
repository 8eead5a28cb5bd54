"""``exporter.consumer.durable``: the chart's way to give a release consumers of its own.

Two releases reading one NATS share ``flowscope-exporter-<sink>`` unless one sets it
(each then gets only part of the records); empty keeps the exporter's default, so an
upgrade keeps the consumers and their position. The schema refuses at install the
names the exporter would refuse at start-up (exit 2).
"""

from __future__ import annotations

from typing import Any

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.settings import Settings

from tests.support.chart_templates import render_objects
from tests.unit.deploy.test_chart_schema import CHART, nested, problems

PATH = ("exporter", "consumer", "durable")
VARIABLE = "FLOWSCOPE_CONSUMER_DURABLE"


def exporter_env(values: dict[str, Any]) -> dict[str, str]:
    (workload,) = [
        o for o in render_objects(CHART, values)
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "exporter"
    ]  # fmt: skip
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_empty_keeps_the_exporters_default_name() -> None:
    env = exporter_env({})
    assert VARIABLE not in env
    assert config.load(Settings, {}, env).consumer.durable == "flowscope-exporter"


def test_a_release_name_reaches_the_exporter() -> None:
    env = exporter_env(nested(PATH, "observability-b"))
    assert env[VARIABLE] == "observability-b"
    assert config.load(Settings, {}, env).consumer.durable == "observability-b"


def loads(value: str) -> bool:
    try:
        config.load(Settings, {}, {VARIABLE: value})
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    ["", "release-a", "flowscope_debug", "Équipe-2", "x" * 241, "x" * 242, "release.a",
     "release a", " release", "release\t", "release\n", "flows*", "flows>", "team/a",
     "team\\a", "bell\x07", "del\x7f", "nbsp\u00a0", "em\u2003space", "ideographic\u3000"],
)  # fmt: skip
def test_the_schema_accepts_exactly_what_the_exporter_loads(value: str) -> None:
    """The empty value is the chart's "unset" (no variable): accepted."""
    schema_accepts = not problems(nested(PATH, value))
    assert schema_accepts == (value == "" or loads(value))
