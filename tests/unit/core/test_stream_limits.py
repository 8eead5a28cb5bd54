"""nats.stream_* settings are checked against what nats-server takes in a stream's
configuration. Before, any number loaded, and a value the server refuses (replicas
above 5 or negative, a negative max_age, one under its 100 ms minimum, or one whose
nanoseconds overflow) failed every service at stream creation, at each restart: a crash
loop instead of one line naming the setting (exit 2)."""

from __future__ import annotations

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError

from tests.support.deploying import settings_class

MAX_AGE = "FLOWSCOPE_NATS_STREAM_MAX_AGE"
REPLICAS = "FLOWSCOPE_NATS_STREAM_REPLICAS"


def loaded(variable: str, value: str) -> object:
    settings = config.load(settings_class("enricher"), {}, env={variable: value})
    nats = settings.nats
    return nats.stream_max_age if variable == MAX_AGE else nats.stream_replicas


@pytest.mark.parametrize(
    ("variable", "value"),
    [(REPLICAS, "6"), (REPLICAS, "-1"), (REPLICAS, "100"), (MAX_AGE, "-1"),
     (MAX_AGE, "0.05"), (MAX_AGE, "0.0999"), (MAX_AGE, "9223372037"), (MAX_AGE, "1e10")],
)  # fmt: skip
def test_a_value_nats_server_refuses_stops_start_up_naming_the_setting(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as e:
        loaded(variable, value)
    assert variable in str(e.value)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [(REPLICAS, "0", 0), (REPLICAS, "1", 1), (REPLICAS, "5", 5), (MAX_AGE, "0", 0.0),
     (MAX_AGE, "0.1", 0.1), (MAX_AGE, "86400", 86400.0), (MAX_AGE, "9223372036", 9223372036.0)],
)  # fmt: skip
def test_a_value_nats_server_takes_loads(variable: str, value: str, expected: float) -> None:
    assert loaded(variable, value) == expected
