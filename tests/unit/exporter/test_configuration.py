"""Exporter settings, the OTEL_EXPORTER_OTLP_* fallback, and bad configuration → exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.settings import OtlpSettings, Settings


def load(env: dict[str, str]) -> Settings:
    return config.load(Settings, {}, env)


def test_defaults() -> None:
    s = load({})
    assert s.sinks == ("stdout",)
    assert s.elasticsearch.flows_data_stream == "logs-flowscope.flows-default"
    assert s.elasticsearch.install_template is True


def test_sinks_from_environment() -> None:
    s = load({"FLOWSCOPE_SINKS": "otlp, elasticsearch,stdout"})
    assert s.sinks == ("otlp", "elasticsearch", "stdout")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLOWSCOPE_SINKS": "stdout,kafka"}, "FLOWSCOPE_SINKS"),
        ({"FLOWSCOPE_SINKS": "stdout,stdout"}, "FLOWSCOPE_SINKS"),
        ({"FLOWSCOPE_OTLP_ENDPOINT": "ftp://x:1"}, "FLOWSCOPE_OTLP_ENDPOINT"),
        ({"FLOWSCOPE_OTLP_ENDPOINT": "http://collector:notaport"}, "FLOWSCOPE_OTLP_ENDPOINT"),
        ({"FLOWSCOPE_OTLP_PROTOCOL": "thrift"}, "FLOWSCOPE_OTLP_PROTOCOL"),
        ({"FLOWSCOPE_OTLP_CA_FILE": "/nonexistent/ca.pem"}, "FLOWSCOPE_OTLP_CA_FILE"),
        ({"FLOWSCOPE_ELASTICSEARCH_URL": "localhost:9200"}, "FLOWSCOPE_ELASTICSEARCH_URL"),
        ({"FLOWSCOPE_ELASTICSEARCH_CA_FILE": "/nonexistent"}, "FLOWSCOPE_ELASTICSEARCH_CA_FILE"),
        ({"FLOWSCOPE_BATCH_MAX_RECORDS": "0"}, "FLOWSCOPE_BATCH_MAX_RECORDS"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(env)
    assert named in str(e.value)


def test_otel_variables_fill_in_and_logs_specific_wins() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=a",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "x-tenant=logs",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    }
    target = resolve(OtlpSettings(), env)
    assert target.protocol == "http/protobuf"
    assert target.url == "http://collector:4318/v1/logs"  # generic endpoint gets the path
    assert target.headers == (("x-tenant", "logs"),)
    assert target.gzip is False
    assert target.timeout == 2.5
    assert target.tls is False


def test_logs_endpoint_is_used_as_is_and_flowscope_settings_win() -> None:
    env = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://otel.example:443/custom/logs"}
    target = resolve(OtlpSettings(protocol="http/protobuf"), env)
    assert target.url == "https://otel.example:443/custom/logs"
    assert target.tls is True
    target = resolve(OtlpSettings(endpoint="collector:4317", protocol="grpc", insecure=True), env)
    assert target.protocol == "grpc"
    assert target.grpc_target == "collector:4317"
    assert target.tls is False


def test_protocol_follows_the_well_known_port_when_unset() -> None:
    assert resolve(OtlpSettings(endpoint="http://collector:4317"), {}).protocol == "grpc"
    assert resolve(OtlpSettings(endpoint="collector:4318"), {}).protocol == "http/protobuf"
    named = OtlpSettings(endpoint="http://collector:4317", protocol="http/protobuf")
    assert resolve(named, {}).protocol == "http/protobuf"


def test_spec_defaults() -> None:
    target = resolve(OtlpSettings(), {})
    assert target.protocol == "http/protobuf"
    assert target.url == "http://localhost:4318/v1/logs"
    assert target.gzip is True
    assert target.timeout == 10.0
    grpc_target = resolve(OtlpSettings(protocol="grpc"), {})
    assert grpc_target.grpc_target == "localhost:4317"


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
        {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://host:99999"},
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
        {"OTEL_EXPORTER_OTLP_INSECURE": "maybe"},
        {"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"},
    ],
)
def test_bad_otel_variables_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(), env)
    assert next(iter(env)) in str(e.value) or "OTEL_EXPORTER_OTLP_LOGS_" in str(e.value)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--sinks", "stdout,bogus"], {}, "--sinks"),
        (["--otlp-endpoint", "http://:4317"], {}, "--otlp-endpoint"),
        (["--elasticsearch-ca-file", "/nonexistent/ca.pem"], {}, "--elasticsearch-ca-file"),
        (
            ["--sinks", "otlp"],
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/no/ca.pem"},
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    args: list[str], env: dict[str, str], named: str
) -> None:
    """The real command, as a user runs it: one line on stderr naming the setting, exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter", "--http-address", "", *args],
        env={"PATH": "/usr/bin:/bin", "FLOWSCOPE_NATS_URL": "nats://127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
