"""``exporter.consumer.durable`` is limited in bytes, as the exporter counts it.

The exporter refuses a name whose longest consumer name, ``<durable>-elasticsearch``,
is over nats-server's 255 bytes (UTF-8), and stops at start-up (exit 2). The schema's
``maxLength`` counts characters, so a name of two-byte characters passes it; the
exporter's template counts bytes (Go's ``len``) and fails the install instead.
"""

from __future__ import annotations

import pytest
from flowscope.core.messaging import MAX_CONSUMER_NAME
from flowscope.exporter.settings import SINK_NAMES

from tests.support.chart_templates import TemplateFailure, render_objects
from tests.unit.deploy.test_chart_exporter_durable import PATH, VARIABLE, exporter_env, loads
from tests.unit.deploy.test_chart_schema import CHART, nested, problems

# The service's rule: <durable>-<longest sink> within the server's limit.
LIMIT = MAX_CONSUMER_NAME - len("-") - max(len(sink.encode()) for sink in SINK_NAMES)


@pytest.mark.parametrize(
    "value",
    ["é" * 200, "é" * (LIMIT // 2 + 1), "x" * (LIMIT - 1) + "é", "€" * (LIMIT // 3 + 1)],
    ids=lambda v: f"{len(v)}-chars-{len(v.encode())}-bytes",
)
def test_a_name_over_the_byte_limit_fails_the_install_naming_it(value: str) -> None:
    """The schema lets these through (fewer characters than the limit): the template
    is what stops them, before the exporter could."""
    assert len(value.encode()) > LIMIT
    assert not problems(nested(PATH, value))
    assert not loads(value)
    message = rf"^exporter\.consumer\.durable has {len(value.encode())} bytes .* at most {LIMIT},"
    with pytest.raises(TemplateFailure, match=message):
        render_objects(CHART, nested(PATH, value))


@pytest.mark.parametrize(
    "value",
    ["x" * LIMIT, "é" * (LIMIT // 2), "x" * (LIMIT - 2) + "é", "Équipe-€-" + "x" * 200],
    ids=lambda v: f"{len(v)}-chars-{len(v.encode())}-bytes",
)
def test_a_name_within_the_byte_limit_reaches_the_exporter(value: str) -> None:
    assert len(value.encode()) <= LIMIT
    assert not problems(nested(PATH, value))
    assert exporter_env(nested(PATH, value))[VARIABLE] == value
    assert loads(value)
