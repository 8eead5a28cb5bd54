"""SIGTERM while NATS is still unreachable at start-up: the enricher and the exporter stop
(their connect retries for ever otherwise, and an orchestrator's stop would wait for its
kill timeout). The collector's own test is with its service tests (it needs BPF)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("service", ["enricher", "exporter"])
def test_sigterm_while_nats_is_unreachable_stops_the_service(service: str) -> None:
    env = {
        **os.environ,
        "FLOWSCOPE_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "FLOWSCOPE_NATS_CONNECT_TIMEOUT": "0.5",
        "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0",
        "FLOWSCOPE_KUBERNETES_MODE": "local",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowscope.cli", service],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:  # wait until it is in the retry loop
            if "NATS unreachable; retrying" in line or time.monotonic() > deadline:
                break
        else:
            pytest.fail(f"{service} ended before retrying: exit {proc.wait()}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
