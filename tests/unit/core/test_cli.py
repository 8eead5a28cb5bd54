"""The flowscope command as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from flowscope.cli import COMMANDS, unknown_variables


def flowscope(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowscope.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_top_level_help() -> None:
    r = flowscope("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command: str) -> None:
    r = flowscope(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "--nats-url" in r.stdout


@pytest.mark.parametrize("command", ["collector", "enricher", "exporter"])
def test_bad_setting_exits_2_with_one_line(command: str) -> None:
    r = flowscope(command, env={"FLOWSCOPE_NATS_URL": "not-a-url"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "FLOWSCOPE_NATS_URL" in lines[0]
    assert "Traceback" not in r.stderr


def test_unknown_flag_exits_2_with_one_line() -> None:
    r = flowscope("exporter", "--no-such-flag")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "--no-such-flag" in r.stderr


def test_a_misspelt_variable_is_named_with_the_setting_it_is_near() -> None:
    """Before: FLOWSCOPE_NATS_URLS was ignored without a word (the default URL in force)."""
    r = flowscope(
        "observe",
        "--nats-url",
        "nats://127.0.0.1:1",
        env={"FLOWSCOPE_NATS_URLS": "nats://elsewhere:4222", "FLOWSCOPE_SINKZ": "stdout"},
    )
    lines = r.stderr.strip().splitlines()
    assert lines[:2] == [
        "flowscope: warning: FLOWSCOPE_NATS_URLS is not a flowscope setting and is ignored; "
        "did you mean FLOWSCOPE_NATS_URL?",
        "flowscope: warning: FLOWSCOPE_SINKZ is not a flowscope setting and is ignored; "
        "did you mean FLOWSCOPE_SINKS?",
    ], r.stderr
    assert r.returncode == 2 and "cannot connect to nats://127.0.0.1:1" in lines[2]


def test_variables_every_command_reads_and_kubernetes_service_links_are_not_named() -> None:
    env = {
        "FLOWSCOPE_CONFIG": "/etc/flowscope.yaml",
        "FLOWSCOPE_NATS_URL": "nats://nats:4222",
        "FLOWSCOPE_JOIN_SOCKET_GRACE": "30",  # the enricher's, set for every component
        "FLOWSCOPE_COLLECTOR_METRICS_SERVICE_HOST": "10.96.0.7",
        "FLOWSCOPE_COLLECTOR_METRICS_SERVICE_PORT_METRICS": "9090",
        "FLOWSCOPE_NATS_PORT": "tcp://10.96.0.8:4222",
        "FLOWSCOPE_NATS_PORT_4222_TCP_ADDR": "10.96.0.8",
        "FLOWSCOPE_TYPO": "1",
        "PATH": "/usr/bin",
    }
    assert unknown_variables(env) == ["FLOWSCOPE_TYPO is not a flowscope setting and is ignored"]
