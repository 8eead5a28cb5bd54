"""Ctrl-C while a command is still starting: one line, status 130, no traceback.

`flowscope up` installs its signal handlers only once its event loop runs; before that
(imports, settings — about half a second) a Ctrl-C raised KeyboardInterrupt out of
``main`` and printed a traceback. The settings file here is a FIFO, so the command is
held inside its settings for as long as the test needs: a Ctrl-C then lands in that
window every time.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _open_writer(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """The FIFO's write end, once ``proc`` has opened it to read its settings."""
    for _ in range(3000):  # 30 s at most: the settings are read right after the imports
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        try:
            proc.wait(0.01)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"flowscope exited before reading its settings: {proc.returncode}")
    pytest.fail("flowscope never opened its settings file")


@pytest.mark.parametrize("command", ["up", "observe"])
def test_ctrl_c_while_reading_settings_is_one_line_and_status_130(
    tmp_path: Path, command: str
) -> None:
    fifo = tmp_path / "settings.yaml"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli", command, "--config", str(fifo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        writer = _open_writer(fifo, proc)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            os.close(writer)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.decode() == "flowscope: interrupted\n"
    assert out == b""
    assert proc.returncode == 130
