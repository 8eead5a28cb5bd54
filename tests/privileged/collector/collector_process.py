"""The collector as a real process inside a test node (started from inside its netns)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.privileged.collector.node import Node, netns
from tests.support import nats_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CollectorProcess:
    """``flowscope collector`` started in the calling thread's network namespace."""

    nats_url: str
    netns: str  # the namespace it runs in (metrics are fetched from there)
    node: str = "testnode"
    extra: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=list)  # e.g. setpriv ... to drop a capability
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    http_port: int = 0

    def start(self) -> CollectorProcess:
        self.http_port = free_port()
        fd, self.log_path = tempfile.mkstemp(prefix="flowscope-collector-", suffix=".log")
        args = [
            *self.launcher, sys.executable, "-m", "flowscope.cli", "collector",
            "--nats-url", self.nats_url, "--node-name", self.node,
            "--http-address", f"127.0.0.1:{self.http_port}",
            "--flows-active-timeout", "1", "--flows-idle-timeout", "0.5",
            "--publish-batch-max-delay", "0.2", "--drain-timeout", "5",
            *self.extra,
        ]  # fmt: skip
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(args, stdout=fd, stderr=fd, env=env)
        os.close(fd)
        try:
            self.wait_log("collector started")
        except BaseException:
            self.close()  # the caller never gets the process: nothing of it stays behind
            raise
        return self

    def logs(self) -> list[dict[str, object]]:
        out = []
        for line in Path(self.log_path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": line})
        return out

    def wait_log(self, text: str, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if text in str(entry.get("msg", "")):
                    return entry
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"collector exited {self.proc.returncode}: {self.logs()[-10:]}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no log line {text!r}: {self.logs()[-10:]}")

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with netns(self.netns), urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log_path:
            Path(self.log_path).unlink(missing_ok=True)


@contextlib.contextmanager
def nats_inside(node: Node) -> Iterator[nats_server.NatsServer]:
    """A real nats-server started inside ``node``'s host namespace; closed afterwards."""
    with node.inside():
        server = nats_server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def collector_inside(
    node: Node, nats_url: str, env: dict[str, str] | None = None
) -> Iterator[CollectorProcess]:
    """``flowscope collector`` for ``node``, started inside it; stopped afterwards."""
    with node.inside():
        proc = CollectorProcess(nats_url, node.host, env=env or {}).start()
    try:
        yield proc
    finally:
        proc.close()
