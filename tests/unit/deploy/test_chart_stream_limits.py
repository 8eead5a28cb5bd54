"""values.schema.json holds nats.stream.maxAge and .replicas to the ranges the services
check (what nats-server takes in a stream's configuration): before, the schema took any
number, and a value such as ``replicas: 6`` installed, then every pod of every component
failed at start-up. A replicas count written as a string is held to its range too."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy.test_chart_schema import nested, problems, takes_effect

MAX_AGE = ("nats", "stream", "maxAge")
REPLICAS = ("nats", "stream", "replicas")


@pytest.mark.parametrize(
    ("path", "value"),
    [(REPLICAS, v) for v in (-1, 0, 1, 3, 5, 6, 100, "0", "5", "6", "-0", "-1", " +05 ",
                             "0_3", "00_5", "0_6", "1_0", "", "0_", "-00")]
    + [(MAX_AGE, v) for v in (-1, -0.05, 0, 0.05, 0.0999, 0.1, 0.5, 86400, 9223372036,
                              9223372036.5, 9223372037, 1e10, "", "0", "0.1", "86400")],
    ids=repr,
)  # fmt: skip
def test_the_schema_takes_a_stream_limit_exactly_when_the_services_do(
    path: tuple[str, ...], value: Any
) -> None:
    assert (not problems(nested(path, value))) == takes_effect(path, value)


@pytest.mark.parametrize(("path", "value"), [(REPLICAS, 6), (REPLICAS, "6"), (MAX_AGE, 0.05)])
def test_values_nats_server_refuses_fail_the_install(path: tuple[str, ...], value: Any) -> None:
    assert problems(nested(path, value))
