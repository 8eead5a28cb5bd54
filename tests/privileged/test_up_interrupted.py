"""Ctrl-C while `flowscope up` waits for its nats-server: no service is started.

`up` looks for nats-server beside its Python, so the test runs it from a virtual
environment of its own whose ``nats-server`` waits at a gate (a FIFO) before it becomes
the real one, and whose ``python`` writes down every command it runs. The Ctrl-C lands
while the gate is shut: `up` used to start the three services anyway once the server was
ready — the collector compiling its programs and attaching filters — only to stop them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.collector.node import Node
from tests.support import nats_server


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"upi{os.getpid()}", ipv6=False).built(pods=1) as built:
        yield built


def _venv(root: Path) -> Path:
    """A venv seeing this one's packages; its python logs its arguments to ``runs``."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(root)],
        check=True,
    )
    site = Path(sysconfig.get_paths(vars={"base": str(root), "platbase": str(root)})["purelib"])
    ours = sysconfig.get_paths()["purelib"]
    (site / "flowscope-test.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    real = os.path.realpath(root / "bin" / "python")
    python = root / "bin" / "python"
    python.unlink()
    python.write_text(f'#!/bin/bash\necho "$*" >> {root}/runs\nexec -a "$0" {real} "$@"\n')
    python.chmod(0o755)
    gate = root / "gate"
    os.mkfifo(gate)
    server = root / "bin" / "nats-server"
    server.write_text(
        f'#!/bin/sh\ntouch {root}/waiting\nread _ < {gate}\nexec {nats_server.binary()} "$@"\n'
    )
    server.chmod(0o755)
    return root


def test_ctrl_c_while_nats_starts_starts_no_service(node: Node, tmp_path: Path) -> None:
    venv = _venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    with node.inside():
        up = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "flowscope.cli", "up", "--log-format", "text"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        for _ in range(6000):  # 60 s at most: imports, then the server is started
            if (venv / "waiting").exists() or up.poll() is not None:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(0.01)
        assert (venv / "waiting").exists(), "up never started its nats-server"
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C, while the server is not ready
        with open(venv / "gate", "w") as gate:
            gate.write("go\n")
        _, err = up.communicate(timeout=90)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    runs = (venv / "runs").read_text().splitlines()
    assert runs == ["-m flowscope.cli up --log-format text"], runs
    assert up.returncode == 0, err.decode()[-2000:]
    assert "Traceback" not in err.decode()
