"""A password written into a URL without percent-encoding ('/' is common: base64 holds
it) is refused, and the line refusing it does not show it."""

from __future__ import annotations

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.settings import Settings


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("FLOWSCOPE_NATS_URL", "nats://app:Zm9v/YmFy@nats:4222"),
        ("FLOWSCOPE_NATS_URL", "nats://a:4222,tls://app:Zm9v/YmFy@nats:4222"),
        ("FLOWSCOPE_ELASTICSEARCH_URL", "https://elastic:Zm9v/YmFy@es:9200"),
    ],
)
def test_the_refusal_line_does_not_show_the_password(variable: str, url: str) -> None:
    with pytest.raises(ConfigError, match=variable) as error:
        config.load(Settings, {}, env={variable: url})
    assert "YmFy" not in str(error.value) and "Zm9v" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://app:Zm9v/YmFy@nats:4222/x", "nats://nats:4222/x"),
        ("bob:p/w@h:4317", "h:4317"),
        ("http://h:9200/a@b", "http://h:9200/a@b"),  # host:port, then a path with an @
        ("http://[::1]/a@b", "http://[::1]/a@b"),
    ],
)
def test_without_secrets_past_a_slash_in_the_password(url: str, shown: str) -> None:
    assert config.without_secrets(url) == shown
