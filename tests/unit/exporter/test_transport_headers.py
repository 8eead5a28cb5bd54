"""Extra OTLP headers that the transports write themselves are refused at start-up.

Accepted before, they broke every export: ``content-length`` cut the body (the receiver
read an empty request and answered success: the records were lost) or raised in
aiohttp, ``transfer-encoding`` was answered 400 (every record dead-lettered), and a
``grpc-*`` name raised in grpc (the lane took it for a bug and retried for ever).
"""

from __future__ import annotations

import pytest
from flowscope.core.errors import ConfigError
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.settings import OtlpSettings

from tests.unit.exporter.test_refused_settings import run_exporter


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize(
    "item", ["content-length=10", "Transfer-Encoding=chunked", "expect=x", "grpc-status=x"]
)
def test_a_transport_header_is_bad_configuration(protocol: str, item: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20hunter2,{item}"}
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(endpoint="https://collector:4318", protocol=protocol), env)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(e.value)
    assert item.partition("=")[0].lower() in str(e.value)
    assert "hunter2" not in str(e.value)


def test_the_flowscope_setting_is_checked_too() -> None:
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(endpoint="https://collector:4318", headers="content-type=x"), {})
    assert "FLOWSCOPE_OTLP_HEADERS" in str(e.value)


def test_the_exporter_exits_2_naming_the_variable() -> None:
    proc = run_exporter({"FLOWSCOPE_SINKS": "otlp", "FLOWSCOPE_OTLP_HEADERS": "content-length=10"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "FLOWSCOPE_OTLP_HEADERS" in lines[0] and "content-length" in lines[0]


def test_other_headers_still_pass() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-scope-orgid=tenant%201,user-agent=me,host=otel"}
    target = resolve(OtlpSettings(endpoint="https://collector:4318"), env)
    assert dict(target.headers)["x-scope-orgid"] == "tenant 1"
