"""``consumer.durable``: a base for names nats-server accepts, or refused at start-up.

The names are ``<durable>-<sink>``; nats-server (and nats-py before it) refuses
whitespace, ``.``, ``*``, ``>``, path separators and names over 255 bytes. Refused at
load, a bad name is one ConfigError naming the setting, instead of every lane retrying
its subscription for ever. tests/integration/exporter/test_consumer_durable.py runs
the exporters.
"""

from __future__ import annotations

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.consuming import durable_name
from flowscope.exporter.settings import SINK_NAMES, Settings


def durable(env: dict[str, str]) -> str:
    return config.load(Settings, {}, env).consumer.durable


def test_the_default_is_the_name_before_the_setting() -> None:
    """Existing consumers keep their position after an upgrade."""
    assert durable({}) == "flowscope-exporter"
    assert durable_name("elasticsearch") == "flowscope-exporter-elasticsearch"
    assert durable_name("otlp", "release-b") == "release-b-otlp"


@pytest.mark.parametrize("value", ["release-a", "flowscope_exporter_debug", "Équipe-2", "x" * 241])
def test_names_jetstream_takes_are_taken(value: str) -> None:
    assert durable({"FLOWSCOPE_CONSUMER_DURABLE": value}) == value
    longest = max(len(durable_name(sink, value).encode()) for sink in SINK_NAMES)
    assert longest <= 255


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("release.a", "'.'"),
        ("release a", "' '"),
        ("release\ta", "'\\t'"),
        ("release\na", "'\\n'"),
        ("flows*", "'*'"),
        ("flows>", "'>'"),
        ("team/a", "'/'"),
        ("team\\a", "'\\\\'"),
        ("bell\x07", "'\\x07'"),
        ("x" * 242, "too long"),
        ("é" * 121, "too long"),  # 242 bytes: the server counts bytes
    ],
)
def test_names_jetstream_refuses_are_refused_naming_the_setting(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        durable({"FLOWSCOPE_CONSUMER_DURABLE": value})
    assert "FLOWSCOPE_CONSUMER_DURABLE" in str(e.value)
    assert reason in str(e.value)


def test_the_flag_is_named_when_the_flag_is_wrong() -> None:
    with pytest.raises(ConfigError) as e:
        config.load(Settings, {"consumer.durable": "a.b"}, {})
    assert "--consumer-durable" in str(e.value)
