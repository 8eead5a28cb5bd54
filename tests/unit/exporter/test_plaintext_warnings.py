"""Credentials configured for a plaintext connection: one start-up warning, not an error.

Elasticsearch credentials with an ``http://`` URL, and OTLP headers with an ``http://``
endpoint or insecure gRPC, go out unencrypted with every request. A loopback or
same-pod backend makes that legitimate, so start-up goes on; but the log says so once,
naming the settings (and the header names), never a secret.
"""

from __future__ import annotations

import json
import logging
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.logs import JsonFormatter
from flowscope.exporter.elasticsearch import BulkClient
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.settings import Settings

ES_LOGGER = "flowscope.exporter.elasticsearch"
OTLP_LOGGER = "flowscope.exporter.otlp"


def load(env: dict[str, str]) -> Settings:
    return config.load(Settings, {}, env)


def warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, object]]:
    """The warnings of ``logger`` as the JSON lines the service would write."""
    return [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == logger and r.levelno == logging.WARNING
    ]


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    path = tmp_path / "api-key"
    path.write_text("hunter2\n")
    return str(path)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"API_KEY": "hunter2"}, "FLOWSCOPE_ELASTICSEARCH_API_KEY"),
        ({"API_KEY_FILE": "<file>"}, "FLOWSCOPE_ELASTICSEARCH_API_KEY_FILE"),
        ({"USERNAME": "flowscope", "PASSWORD": "hunter2"}, "FLOWSCOPE_ELASTICSEARCH_PASSWORD"),
    ],
)
def test_elasticsearch_credentials_with_an_http_url_are_a_warning(
    given: dict[str, str], named: str, key_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the credentials were sent in plaintext with no word in the log."""
    env = {
        f"FLOWSCOPE_ELASTICSEARCH_{k}": key_file if v == "<file>" else v for k, v in given.items()
    }
    env["FLOWSCOPE_ELASTICSEARCH_URL"] = "http://es:9200"
    with caplog.at_level(logging.WARNING, ES_LOGGER):
        BulkClient(load(env).elasticsearch)
    [warning] = warnings(caplog, ES_LOGGER)
    assert "unencrypted" in str(warning["msg"])
    assert "FLOWSCOPE_ELASTICSEARCH_URL" in str(warning["setting"])
    assert named in str(warning["credentials"])
    assert "hunter2" not in json.dumps(warning)


@pytest.mark.parametrize(
    "env",
    [
        {"FLOWSCOPE_ELASTICSEARCH_URL": "https://es:9200", "FLOWSCOPE_ELASTICSEARCH_API_KEY": "k"},
        {"FLOWSCOPE_ELASTICSEARCH_URL": "http://es:9200"},  # no credentials: nothing to leak
    ],
)
def test_elasticsearch_without_plaintext_credentials_warns_nothing(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, ES_LOGGER):
        BulkClient(load(env).elasticsearch)
    assert warnings(caplog, ES_LOGGER) == []


@pytest.mark.parametrize(
    ("env", "source"),
    [
        ({"FLOWSCOPE_OTLP_ENDPOINT": "http://collector:4318",
          "FLOWSCOPE_OTLP_HEADERS": "authorization=Bearer%20hunter2,x-tenant=a"},
         "FLOWSCOPE_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "collector:4317", "FLOWSCOPE_OTLP_PROTOCOL": "grpc",
          "FLOWSCOPE_OTLP_INSECURE": "true",
          "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20hunter2,x-tenant=a"},
         "OTEL_EXPORTER_OTLP_HEADERS"),
    ],
)  # fmt: skip
def test_otlp_headers_with_a_plaintext_endpoint_are_a_warning(
    env: dict[str, str], source: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the tokens went out in plaintext with no word in the log."""
    with caplog.at_level(logging.WARNING, OTLP_LOGGER):
        target = resolve(load(env).otlp, env)
    assert not target.tls
    [warning] = warnings(caplog, OTLP_LOGGER)
    assert "unencrypted" in str(warning["msg"])
    assert warning["setting"] == source
    assert warning["headers"] == "authorization, x-tenant"
    assert "hunter2" not in json.dumps(warning)


@pytest.mark.parametrize(
    "env",
    [
        {"FLOWSCOPE_OTLP_ENDPOINT": "https://collector:4318",
         "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20hunter2"},
        {"FLOWSCOPE_OTLP_ENDPOINT": "collector:4317", "FLOWSCOPE_OTLP_PROTOCOL": "grpc",
         "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20hunter2"},  # TLS: not insecure
        {"FLOWSCOPE_OTLP_ENDPOINT": "http://collector:4318"},  # no headers
    ],
)  # fmt: skip
def test_otlp_without_plaintext_headers_warns_nothing(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, OTLP_LOGGER):
        resolve(load(env).otlp, env)
    assert warnings(caplog, OTLP_LOGGER) == []


def test_the_running_exporter_logs_each_warning_once_and_keeps_running() -> None:
    """The service, as started: both warnings on stderr before it waits for NATS (which
    is unreachable here), no secret anywhere; SIGTERM then stops it normally."""
    env = {
        "PATH": "/usr/bin:/bin",
        "FLOWSCOPE_NATS_URL": "nats://127.0.0.1:1",
        "FLOWSCOPE_SINKS": "otlp,elasticsearch",
        "FLOWSCOPE_ELASTICSEARCH_URL": "http://127.0.0.1:1",
        "FLOWSCOPE_ELASTICSEARCH_API_KEY": "hunter2",
        "FLOWSCOPE_OTLP_ENDPOINT": "http://127.0.0.1:1/v1/logs",
        "FLOWSCOPE_OTLP_HEADERS": "authorization=Bearer%20hunter2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli", "exporter", "--http-address", ""],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not any("NATS unreachable" in x for x in lines):
            if select.select([proc.stderr], [], [], 1.0)[0]:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    text = "".join(lines) + err + out
    unencrypted = [json.loads(x) for x in text.splitlines() if "unencrypted" in x]
    assert sorted(w["logger"] for w in unencrypted) == [ES_LOGGER, OTLP_LOGGER], text
    assert all(w["level"] == "warning" for w in unencrypted)
    assert "hunter2" not in text
    assert proc.returncode == 0, text
