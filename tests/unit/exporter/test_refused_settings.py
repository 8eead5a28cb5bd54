"""Settings that would be silently unused or fail every export are refused at start-up.

Credentials set but not sent, TLS files set for a plaintext connection, and header
values that no transport can send: each is a ConfigError naming the setting (one line,
exit 2), never repeating a secret.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.elasticsearch import BulkClient
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.settings import OtlpSettings, Settings

from tests.support.otlp_receivers import TlsFiles, make_tls


def load(env: dict[str, str]) -> Settings:
    return config.load(Settings, {}, env)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))[1]


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text("hunter2\n")
    return str(path)


@pytest.fixture
def empty_file(tmp_path: Path) -> str:
    path = tmp_path / "empty"
    path.write_text("\n")
    return str(path)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"PASSWORD": "hunter2"}, "FLOWSCOPE_ELASTICSEARCH_USERNAME"),
        ({"PASSWORD_FILE": "<secret>"}, "FLOWSCOPE_ELASTICSEARCH_USERNAME"),
        ({"USERNAME": "flowscope"}, "FLOWSCOPE_ELASTICSEARCH_PASSWORD"),
        ({"API_KEY_FILE": "<empty>"}, "FLOWSCOPE_ELASTICSEARCH_API_KEY_FILE"),
        ({"USERNAME": "flowscope", "PASSWORD_FILE": "<empty>"},
         "FLOWSCOPE_ELASTICSEARCH_PASSWORD_FILE"),
        ({"API_KEY": "hunter2", "USERNAME": "flowscope", "PASSWORD": "hunter2"},
         "FLOWSCOPE_ELASTICSEARCH_API_KEY"),
    ],
)  # fmt: skip
def test_elasticsearch_credentials_that_would_not_be_sent_are_refused(
    given: dict[str, str], named: str, secret_file: str, empty_file: str
) -> None:
    """Before, each of these started and sent no Authorization header (or only the key)."""
    files = {"<secret>": secret_file, "<empty>": empty_file}
    env = {f"FLOWSCOPE_ELASTICSEARCH_{k}": files.get(v, v) for k, v in given.items()}
    with pytest.raises(ConfigError) as e:
        BulkClient(load(env).elasticsearch)
    assert named in str(e.value)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("var", ["FLOWSCOPE_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS",
                                 "OTEL_EXPORTER_OTLP_LOGS_HEADERS"])  # fmt: skip
@pytest.mark.parametrize(
    "item",
    [
        "authorization=Bearer%20hunter2%0D%0Ax-injected=1",  # a line break, URL-encoded
        "authorization=Bearer hunter2\r\nx-injected: 1",  # a raw one
        "authorization=hunter2%00",
        "authorization=hunter2%09",  # gRPC refuses a tab
        "authorization=hunter2%C3%A9",  # not ASCII: gRPC refuses it
        "x%20api=hunter2",  # names are not URL-decoded: '%' is no header name
        "x api=hunter2",
        "=hunter2",
    ],
)
def test_header_items_no_transport_can_send_are_refused_by_position(var: str, item: str) -> None:
    """Before, such a value passed start-up, then every export raised out of the
    transport (a traceback) and was retried for ever."""
    env = {var: f"x-tenant=a,{item}"}
    with pytest.raises(ConfigError) as e:
        resolve(load(env).otlp, env)
    assert var in str(e.value)
    assert "item 2" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_binary_grpc_metadata_is_refused() -> None:
    """A ``-bin`` key needs a bytes value in gRPC: every export raised a TypeError."""
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-trace-bin=hunter2"}
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(endpoint="https://collector:4317", protocol="grpc"), env)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(e.value)
    assert "hunter2" not in str(e.value)
    http = resolve(OtlpSettings(endpoint="https://collector:4318"), env)
    assert http.headers == (("x-trace-bin", "hunter2"),)


def test_ordinary_header_values_are_kept() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Basic%20YTpi%3D,x-scope_org.id=a b"}
    target = resolve(OtlpSettings(), env)
    assert target.headers == (("authorization", "Basic YTpi="), ("x-scope_org.id", "a b"))


@pytest.mark.parametrize("field", ["CA_FILE", "CLIENT_CERT"])
def test_elasticsearch_tls_files_with_an_http_url_are_refused(
    field: str, tls_files: TlsFiles
) -> None:
    """Before, the files were loaded and the connection went out in plaintext anyway."""
    env = {"FLOWSCOPE_ELASTICSEARCH_URL": "http://es:9200"}
    if field == "CA_FILE":
        env["FLOWSCOPE_ELASTICSEARCH_CA_FILE"] = str(tls_files.ca)
    else:
        env["FLOWSCOPE_ELASTICSEARCH_CLIENT_CERT"] = str(tls_files.cert)
        env["FLOWSCOPE_ELASTICSEARCH_CLIENT_KEY"] = str(tls_files.key)
    with pytest.raises(ConfigError) as e:
        BulkClient(load(env).elasticsearch)
    assert f"FLOWSCOPE_ELASTICSEARCH_{field}" in str(e.value)
    assert "FLOWSCOPE_ELASTICSEARCH_URL" in str(e.value)


@pytest.mark.parametrize(
    ("settings", "env", "named"),
    [
        ({"endpoint": "http://collector:4318", "ca_file": "<ca>"}, {}, "FLOWSCOPE_OTLP_CA_FILE"),
        ({"endpoint": "http://collector:4317", "protocol": "grpc"},
         {"OTEL_EXPORTER_OTLP_CERTIFICATE": "<ca>"}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        ({"endpoint": "collector:4317", "protocol": "grpc", "insecure": True, "ca_file": "<ca>"},
         {}, "FLOWSCOPE_OTLP_CA_FILE"),
        ({"endpoint": "collector:4317", "protocol": "grpc"},
         {"OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE":
          "<cert>", "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY": "<key>"},
         "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE"),
    ],
)  # fmt: skip
def test_otlp_tls_files_with_a_plaintext_endpoint_are_refused(
    settings: dict[str, object], env: dict[str, str], named: str, tls_files: TlsFiles
) -> None:
    files = {"<ca>": str(tls_files.ca), "<cert>": str(tls_files.cert), "<key>": str(tls_files.key)}
    settings = {k: files.get(v, v) if isinstance(v, str) else v for k, v in settings.items()}
    env = {k: files.get(v, v) for k, v in env.items()}
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(**settings), env)  # type: ignore[arg-type]
    assert named in str(e.value)
    assert "plaintext" in str(e.value)


def test_otlp_tls_files_with_a_tls_endpoint_are_used(tls_files: TlsFiles) -> None:
    """A scheme-less gRPC endpoint is TLS unless insecure (the specification's rule)."""
    target = resolve(OtlpSettings(endpoint="collector:4317", ca_file=str(tls_files.ca)), {})
    assert target.tls and target.ssl is not None


def test_otlp_target_repr_shows_no_secret() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20hunter2"}
    target = resolve(OtlpSettings(endpoint="https://collector:4318"), env)
    # Refused in the endpoint since; the repr would hide such a URL's credentials still.
    target = dataclasses.replace(target, url="https://user:hunter2@collector:4318")
    assert "hunter2" not in repr(target)
    assert "authorization" in repr(target)
    assert "collector:4318" in repr(target)


def run_exporter(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter", "--http-address", ""],
        env={"PATH": "/usr/bin:/bin", "FLOWSCOPE_NATS_URL": "nats://127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLOWSCOPE_SINKS": "elasticsearch", "FLOWSCOPE_ELASTICSEARCH_PASSWORD": "hunter2"},
         "FLOWSCOPE_ELASTICSEARCH_USERNAME"),
        ({"FLOWSCOPE_SINKS": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "a=hunter2%0D%0Ab=c"},
         "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"FLOWSCOPE_SINKS": "elasticsearch", "FLOWSCOPE_ELASTICSEARCH_CA_FILE": "<ca>"},
         "FLOWSCOPE_ELASTICSEARCH_CA_FILE"),
    ],
)  # fmt: skip
def test_refusals_exit_2_with_one_line(
    env: dict[str, str], named: str, tls_files: TlsFiles
) -> None:
    env = {k: str(tls_files.ca) if v == "<ca>" else v for k, v in env.items()}
    proc = run_exporter(env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert named in lines[0]
    assert "hunter2" not in proc.stderr + proc.stdout
