"""Exporter settings, the OTEL_EXPORTER_OTLP_* fallback, and bad configuration → exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.elasticsearch import tls_context
from flowscope.exporter.otlp_config import resolve
from flowscope.exporter.settings import OtlpSettings, Settings

from tests.support.otlp_receivers import TlsFiles, make_tls


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


@pytest.mark.parametrize("var", ["FLOWSCOPE_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"])
def test_a_malformed_header_item_is_named_by_position_never_echoed(var: str) -> None:
    """A header list holds tokens: an item missing its ``=`` is often a bare secret."""
    env = {var: "x-tenant=a,Bearer s3cr3t-t0ken"}
    with pytest.raises(ConfigError) as e:
        resolve(load(env).otlp, env)
    assert var in str(e.value)
    assert "item 2" in str(e.value)
    assert "s3cr3t" not in str(e.value)


def test_elasticsearch_url_with_credentials_is_refused_without_echoing_them() -> None:
    env = {"FLOWSCOPE_ELASTICSEARCH_URL": "https://elastic:hunter2@es.example:9200"}
    with pytest.raises(ConfigError) as e:
        load(env)
    assert "FLOWSCOPE_ELASTICSEARCH_URL" in str(e.value)
    assert "username" in str(e.value)  # where credentials go instead
    assert "hunter2" not in str(e.value)
    bad_port = {"FLOWSCOPE_ELASTICSEARCH_URL": "https://elastic:hunter2@es.example:nope"}
    with pytest.raises(ConfigError) as e:
        load(bad_port)
    assert "hunter2" not in str(e.value)


def test_otlp_endpoint_errors_do_not_echo_credentials() -> None:
    with pytest.raises(ConfigError) as e:
        load({"FLOWSCOPE_OTLP_ENDPOINT": "ftp://user:hunter2@collector:4317"})
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    "var",
    ["FLOWSCOPE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"],
)
@pytest.mark.parametrize(
    "endpoint",
    [
        "https://alice:hunter2@collector:4318",
        "http://hunter2@collector:4318/v1/logs",
        "alice:hunter2@collector:4317",  # gRPC, no scheme
    ],
)
def test_otlp_endpoint_with_credentials_is_refused_pointing_to_the_headers(
    var: str, endpoint: str
) -> None:
    """Before, aiohttp sent ``user:password@`` as Basic auth: a password taken from a
    flag (which ps shows) or from a URL that is logged."""
    env = {var: endpoint}
    with pytest.raises(ConfigError) as e:
        resolve(load(env).otlp, env)
    assert var in str(e.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(e.value)  # where credentials go instead
    assert "hunter2" not in str(e.value)


def test_a_built_otlp_endpoint_with_credentials_is_refused_too() -> None:
    """Settings built in code skip the loader's parsers: resolving checks again."""
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(endpoint="https://alice:hunter2@collector:4318"), {})
    assert "FLOWSCOPE_OTLP_ENDPOINT" in str(e.value)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLOWSCOPE_OTLP_TIMEOUT": "0"}, "FLOWSCOPE_OTLP_TIMEOUT"),
        ({"FLOWSCOPE_OTLP_TIMEOUT": "-2"}, "FLOWSCOPE_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_LOGS_TIMEOUT": "-1"}, "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"),
    ],
)
def test_otlp_timeout_must_be_positive(env: dict[str, str], named: str) -> None:
    """Before, a timeout of 0 or less silently became 10 s."""
    with pytest.raises(ConfigError) as e:
        resolve(load(env).otlp, env)
    assert named in str(e.value)
    assert load({"FLOWSCOPE_OTLP_TIMEOUT": "0.5"}).otlp.timeout == 0.5


def test_grpc_target_keeps_an_ipv6_literal_in_brackets() -> None:
    target = resolve(OtlpSettings(endpoint="http://[::1]:4317", protocol="grpc"), {})
    assert target.grpc_target == "[::1]:4317"
    target = resolve(OtlpSettings(endpoint="https://[fd00::2]", protocol="grpc"), {})
    assert target.grpc_target == "[fd00::2]:443"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, TlsFiles]:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def not_pem(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("this is not a certificate\n")
    return str(path)


@pytest.mark.parametrize("field", ["CA_FILE", "CLIENT_CERT", "CLIENT_KEY"])
def test_tls_files_that_are_not_pem_are_configuration_errors(
    field: str, not_pem: str, tls_files: tuple[TlsFiles, TlsFiles]
) -> None:
    """Readable but not PEM: a start-up error naming the setting, not an exception at the
    first request (OTLP) or a backend that stays "unavailable" (Elasticsearch)."""
    _, client = tls_files
    good = {
        "CA_FILE": str(client.ca),
        "CLIENT_CERT": str(client.cert),
        "CLIENT_KEY": str(client.key),
    }
    files = {**good, field: not_pem}
    otlp_env = {f"FLOWSCOPE_OTLP_{k}": v for k, v in files.items()}
    otlp_env["FLOWSCOPE_OTLP_ENDPOINT"] = "https://collector:4318"
    with pytest.raises(ConfigError) as e:
        resolve(load(otlp_env).otlp, otlp_env)
    assert f"FLOWSCOPE_OTLP_{field}" in str(e.value)
    es_env = {f"FLOWSCOPE_ELASTICSEARCH_{k}": v for k, v in files.items()}
    es_env["FLOWSCOPE_ELASTICSEARCH_URL"] = "https://es:9200"
    with pytest.raises(ConfigError) as e:
        tls_context(load(es_env).elasticsearch)
    assert f"FLOWSCOPE_ELASTICSEARCH_{field}" in str(e.value)


def test_otel_certificate_that_is_not_pem_names_the_variable(not_pem: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": not_pem}
    with pytest.raises(ConfigError) as e:
        resolve(OtlpSettings(endpoint="https://collector:4318"), env)
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in str(e.value)


@pytest.mark.parametrize("prefix", ["FLOWSCOPE_OTLP_", "FLOWSCOPE_ELASTICSEARCH_"])
def test_client_cert_and_key_come_together(
    prefix: str, tls_files: tuple[TlsFiles, TlsFiles]
) -> None:
    _, client = tls_files
    for present, missing in (("CLIENT_CERT", "CLIENT_KEY"), ("CLIENT_KEY", "CLIENT_CERT")):
        env = {prefix + present: str(client.cert if present == "CLIENT_CERT" else client.key)}
        with pytest.raises(ConfigError) as e:
            settings = load(env)
            if prefix == "FLOWSCOPE_OTLP_":
                resolve(settings.otlp, env)
            else:
                tls_context(settings.elasticsearch)
        assert prefix + missing in str(e.value)


def test_good_tls_files_make_a_context(tls_files: tuple[TlsFiles, TlsFiles]) -> None:
    _, client = tls_files
    files = {
        "CA_FILE": str(client.ca),
        "CLIENT_CERT": str(client.cert),
        "CLIENT_KEY": str(client.key),
    }
    es_env = {f"FLOWSCOPE_ELASTICSEARCH_{k}": v for k, v in files.items()}
    es_env["FLOWSCOPE_ELASTICSEARCH_URL"] = "https://es:9200"
    assert tls_context(load(es_env).elasticsearch) is not None
    assert tls_context(load({}).elasticsearch) is None  # http://, no files: no TLS
    otlp_env = {f"FLOWSCOPE_OTLP_{k}": v for k, v in files.items()}
    otlp_env["FLOWSCOPE_OTLP_ENDPOINT"] = "https://collector:4318"
    assert resolve(load(otlp_env).otlp, otlp_env).ssl is not None


def run_exporter(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter", "--http-address", "", *args],
        env={"PATH": "/usr/bin:/bin", "FLOWSCOPE_NATS_URL": "nats://127.0.0.1:1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sinks", "elasticsearch", "--elasticsearch-url", "https://es:9200",
          "--elasticsearch-ca-file"], "FLOWSCOPE_ELASTICSEARCH_CA_FILE"),
        (["--sinks", "otlp", "--otlp-endpoint", "https://collector:4318", "--otlp-ca-file"],
         "FLOWSCOPE_OTLP_CA_FILE"),
    ],
)  # fmt: skip
def test_a_ca_file_that_is_not_pem_exits_2_with_one_line(
    args: list[str], named: str, not_pem: str
) -> None:
    """Before, the exporter started and then failed every request to that backend."""
    proc = run_exporter([*args, not_pem], {})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLOWSCOPE_ELASTICSEARCH_URL": "https://elastic:hunter2@es:9200"},
         "FLOWSCOPE_ELASTICSEARCH_URL"),
        ({"FLOWSCOPE_SINKS": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=1,hunter2"},
         "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"FLOWSCOPE_OTLP_HEADERS": "hunter2"}, "FLOWSCOPE_OTLP_HEADERS"),
        ({"FLOWSCOPE_SINKS": "elasticsearch", "FLOWSCOPE_ELASTICSEARCH_API_KEY": "hunter2\x01x\n"},
         "FLOWSCOPE_ELASTICSEARCH_API_KEY"),
        ({"FLOWSCOPE_SINKS": "elasticsearch", "FLOWSCOPE_ELASTICSEARCH_USERNAME": "elastic",
          "FLOWSCOPE_ELASTICSEARCH_PASSWORD": "hunter2\r\nX-Injected: 1"},
         "FLOWSCOPE_ELASTICSEARCH_PASSWORD"),
    ],
)  # fmt: skip
def test_bad_secrets_exit_2_without_printing_them(env: dict[str, str], named: str) -> None:
    proc = run_exporter([], env)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_otlp_endpoint_flag_with_credentials_exits_2_without_printing_them() -> None:
    """A flag is visible to every user in ps: the password must not be used from it."""
    args = ["--sinks", "otlp", "--otlp-endpoint", "https://alice:hunter2@collector:4318"]
    proc = run_exporter(args, {})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--otlp-endpoint" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("name", ["api_key", "password"])
def test_elasticsearch_secrets_from_the_environment_lose_surrounding_whitespace(
    name: str,
) -> None:
    """A Secret made with ``kubectl create secret --from-file`` ends in a newline; a
    ``*_file`` secret was already stripped, the same value from a variable was not and
    failed every request ("Forbidden control character") while start-up went on."""
    s = load({f"FLOWSCOPE_ELASTICSEARCH_{name.upper()}": " c2VjcmV0\n"})
    assert getattr(s.elasticsearch, name) == "c2VjcmV0"


@pytest.mark.parametrize("name", ["api_key", "password"])
@pytest.mark.parametrize("inside", ["\n", "\r\nX-Injected: 1", "\t", "\x00", "\x7f"])
def test_elasticsearch_secrets_with_a_control_character_inside_are_refused_unechoed(
    name: str, inside: str
) -> None:
    var = f"FLOWSCOPE_ELASTICSEARCH_{name.upper()}"
    with pytest.raises(ConfigError) as e:
        load({var: f"hunter2{inside}more"})
    assert var in str(e.value)
    assert "hunter2" not in str(e.value)
