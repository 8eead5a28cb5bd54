"""``flowscope up`` ignores nothing it is told: the HTTP address it cannot honour and a
sink setting the exporter would not use are refused (exit 2), the ready line names
the sinks the exporter really runs, and a process of the pipeline that ends unasked
(its nats-server included) is named."""

from __future__ import annotations

import asyncio
import sys

import pytest
from flowscope import cli, up
from flowscope.core import config
from flowscope.core.errors import ConfigError


def settings(*args: str, env: dict[str, str] | None = None) -> up.Settings:
    """up's settings from flags and an environment, as the CLI builds them."""
    parser = cli.build_parser()
    ns = parser.parse_args(["up", *args])
    flags = {k: v for k, v in vars(ns).items() if k != "command"}
    return config.load(up.Settings, flags, env=env or {})


def summary(sinks: list[up.Sink]) -> str:
    return up._summary(up.Pipeline("nats://127.0.0.1:4222"), {}, sinks)


# ---------------------------------------------------------------- sinks


def test_default_is_stdout_plus_one_sink_per_target() -> None:
    assert up.exporter_sinks(settings(), {}) == [up.Sink("stdout")]
    chosen = settings("--otlp-endpoint", "http://127.0.0.1:4317",
                      "--elasticsearch-url", "http://127.0.0.1:9200")  # fmt: skip
    sinks = up.exporter_sinks(chosen, {})
    assert [str(s) for s in sinks] == [
        "stdout", "otlp=http://127.0.0.1:4317", "elasticsearch=http://127.0.0.1:9200"
    ]  # fmt: skip
    env = up._child_env("exporter", chosen, "nats://127.0.0.1:1", 9, sinks)
    assert env["FLOWSCOPE_SINKS"] == "stdout,otlp,elasticsearch"
    assert env["FLOWSCOPE_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert env["FLOWSCOPE_ELASTICSEARCH_URL"] == "http://127.0.0.1:9200"


def test_flowscope_sinks_is_the_exact_list_and_the_summary_says_so() -> None:
    env = {"FLOWSCOPE_SINKS": "otlp", "FLOWSCOPE_OTLP_ENDPOINT": "http://collector:4317"}
    sinks = up.exporter_sinks(settings(env=env), env)
    assert sinks == [up.Sink("otlp", "http://collector:4317")]
    assert "; sinks otlp=http://collector:4317; " in summary(sinks)
    child = up._child_env("exporter", settings(env=env), "nats://127.0.0.1:1", 9, sinks)
    assert child["FLOWSCOPE_SINKS"] == "otlp"


def test_a_sink_without_a_known_target_is_named_alone() -> None:
    env = {"FLOWSCOPE_SINKS": "stdout, elasticsearch"}
    sinks = up.exporter_sinks(settings(env=env), env)
    assert "; sinks stdout, elasticsearch; " in summary(sinks)


@pytest.mark.parametrize(
    ("flag", "sink"),
    [("--otlp-endpoint", "otlp"), ("--elasticsearch-url", "elasticsearch")],
)
def test_a_target_whose_sink_flowscope_sinks_leaves_out_is_refused(flag: str, sink: str) -> None:
    env = {"FLOWSCOPE_SINKS": "stdout"}
    with pytest.raises(ConfigError) as raised:
        up.exporter_sinks(settings(flag, "http://127.0.0.1:1", env=env), env)
    message = str(raised.value)
    assert flag in message and f"leaves out {sink}" in message and "\n" not in message


def test_the_cli_exits_2_on_a_left_out_sink(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWSCOPE_SINKS", "stdout")
    monkeypatch.delenv("FLOWSCOPE_HTTP_ADDRESS", raising=False)
    assert cli.main(["up", "--elasticsearch-url", "http://127.0.0.1:9200"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "FLOWSCOPE_SINKS=stdout leaves out elasticsearch" in line


# ---------------------------------------------------------------- the HTTP address


def test_http_address_is_not_a_setting_of_up() -> None:
    names = {leaf.env for leaf in config.leaves(up.Settings)}
    assert "FLOWSCOPE_HTTP_ADDRESS" not in names
    assert {"FLOWSCOPE_LOG_FORMAT", "FLOWSCOPE_LOG_LEVEL", "FLOWSCOPE_DRAIN_TIMEOUT"} <= names


def test_the_cli_exits_2_on_an_http_address(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["up", "--http-address", "127.0.0.1:9090"]) == 2
    assert "--http-address" in capsys.readouterr().err
    monkeypatch.setenv("FLOWSCOPE_HTTP_ADDRESS", "127.0.0.1:9090")
    assert cli.main(["up"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "FLOWSCOPE_HTTP_ADDRESS" in line and "its own free loopback port" in line


def test_each_child_gets_its_own_loopback_address_and_the_runtime_settings() -> None:
    chosen = settings("--log-format", "text", "--drain-timeout", "3")
    env = up._child_env("enricher", chosen, "nats://127.0.0.1:1", 4321, [up.Sink("stdout")])
    assert env["FLOWSCOPE_HTTP_ADDRESS"] == "127.0.0.1:4321"
    assert env["FLOWSCOPE_LOG_FORMAT"] == "text"
    assert env["FLOWSCOPE_DRAIN_TIMEOUT"] == "3.0"
    with pytest.raises(ConfigError, match="drain-timeout"):
        settings("--drain-timeout", "0")  # the services' own check, kept


@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_a_ready_timeout_that_cannot_elapse_is_refused(value: str) -> None:
    """Before: accepted, and every service started before `not ready within -5 s`."""
    with pytest.raises(ConfigError, match="--ready-timeout"):
        settings("--ready-timeout", value)


def test_each_child_gets_the_flowscope_variables_it_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`flowscope up` names an unknown FLOWSCOPE_* variable once (flowscope.cli); before,
    each of its three children named it again."""
    monkeypatch.setenv("FLOWSCOPE_NATS_URLS", "nats://elsewhere:4222")  # misspelt
    monkeypatch.setenv("FLOWSCOPE_JOIN_SOCKET_GRACE", "60")  # the enricher's
    monkeypatch.setenv("FLOWSCOPE_CONFIG", "/etc/flowscope.yaml")
    monkeypatch.setenv("HOME", "/root")
    chosen, sinks = settings(), [up.Sink("stdout")]
    enricher = up._child_env("enricher", chosen, "nats://127.0.0.1:1", 9, sinks)
    collector = up._child_env("collector", chosen, "nats://127.0.0.1:1", 9, sinks)
    assert enricher["FLOWSCOPE_JOIN_SOCKET_GRACE"] == "60"
    assert "FLOWSCOPE_JOIN_SOCKET_GRACE" not in collector
    for env in (enricher, collector):
        assert "FLOWSCOPE_NATS_URLS" not in env
        assert env["FLOWSCOPE_CONFIG"] == "/etc/flowscope.yaml" and env["HOME"] == "/root"
    assert not cli.unknown_variables(enricher) and not cli.unknown_variables(collector)


# ---------------------------------------------------------------- processes ending


async def _process(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", code)


async def test_the_nats_server_ending_unasked_stops_the_pipeline_and_is_named() -> None:
    service = await _process("import time; time.sleep(60)")
    nats = await _process("import sys; sys.exit(3)")
    pipeline = up.Pipeline("nats://127.0.0.1:4222", [up.Child("enricher", service, 0)])
    try:
        ended = await asyncio.wait_for(up._until_one_ends(pipeline, nats, asyncio.Event()), 30)
        assert ended == ["nats-server exited with status 3"]
    finally:
        service.kill()
        await service.wait()


async def test_a_child_ending_even_with_status_0_unasked_is_named() -> None:
    service = await _process("pass")
    nats = await _process("import time; time.sleep(60)")
    pipeline = up.Pipeline("nats://127.0.0.1:4222", [up.Child("exporter", service, 0)])
    try:
        ended = await asyncio.wait_for(up._until_one_ends(pipeline, nats, asyncio.Event()), 30)
        assert ended == ["exporter exited with status 0"]
    finally:
        nats.kill()
        await nats.wait()


async def test_asked_to_stop_nothing_is_named() -> None:
    service = await _process("import time; time.sleep(60)")
    stop = asyncio.Event()
    stop.set()
    pipeline = up.Pipeline("nats://127.0.0.1:4222", [up.Child("collector", service, 0)])
    try:
        assert await asyncio.wait_for(up._until_one_ends(pipeline, None, stop), 30) == []
    finally:
        service.kill()
        await service.wait()
