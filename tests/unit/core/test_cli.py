"""The flowscope command as a user runs it (a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from flowscope.cli import COMMANDS


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
