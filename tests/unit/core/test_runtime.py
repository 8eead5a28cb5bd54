"""The service runtime: signals drain, root tasks stop the service, errors map to exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from flowscope.core import runtime
from flowscope.core.errors import StartupError
from flowscope.core.runtime import Runtime, RuntimeSettings

QUIET = RuntimeSettings(http_address="", drain_timeout=0.5)


@pytest.fixture
def stop_signals() -> Iterator[None]:
    """The test process's SIGTERM and SIGINT actions, given back after a test that signals
    itself (a service stopped on a signal ignores later ones)."""
    before = {sig: signal.getsignal(sig) for sig in runtime.STOP_SIGNALS}
    yield
    for sig, action in before.items():
        signal.signal(sig, action)


async def test_sigterm_drains_root_tasks(stop_signals: None) -> None:
    drained: list[str] = []
    released: list[str] = []

    async def worker(rt: Runtime) -> None:
        await rt.stopping.wait()
        await asyncio.sleep(0.05)  # in-flight work finishing
        drained.append("worker")

    async def body(rt: Runtime) -> None:
        rt.stack.callback(released.append, "first")
        rt.stack.callback(released.append, "second")
        rt.spawn(worker(rt), "worker")
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

    assert await runtime.serve("test", QUIET, body) == 0
    assert drained == ["worker"]
    assert released == ["second", "first"]  # reverse order
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # stopped: later ones ignored


# A service stopped by SIGTERM that then lingers (the interpreter's exit takes a while
# after the loop is closed: here, a second), reporting run()'s status as its exit status.
LINGERING = """
import asyncio, sys, time
from flowscope.core import runtime

async def body(rt):
    async def waits():
        await rt.stopping.wait()
    rt.spawn(waits(), "waits")
    print("serving", flush=True)

status = runtime.run("t", runtime.RuntimeSettings(http_address="", log_level="error"), body)
print("stopped", flush=True)
time.sleep(1)
sys.exit(status)
"""


def test_a_signal_after_the_stop_does_not_kill_the_process() -> None:
    """Before, closing the loop gave SIGTERM back its default action: a second SIGTERM
    after a clean stop killed the process (exit status -15, 143 in a pod) instead of 0."""
    child = subprocess.Popen([sys.executable, "-c", LINGERING], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "serving\n"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline() == "stopped\n"
        child.send_signal(signal.SIGTERM)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()


async def test_a_root_task_ending_stops_the_others() -> None:
    stopped = asyncio.Event()

    async def finishes() -> None:
        await asyncio.sleep(0.01)

    async def waits(rt: Runtime) -> None:
        await rt.stopping.wait()
        stopped.set()

    async def body(rt: Runtime) -> None:
        rt.spawn(finishes(), "finishes")
        rt.spawn(waits(rt), "waits")

    assert await runtime.serve("test", QUIET, body) == 0
    assert stopped.is_set()


async def test_crash_exits_1_and_drain_deadline_cancels() -> None:
    cancelled = asyncio.Event()

    async def crashes() -> None:
        raise RuntimeError("bug")

    async def ignores_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def body(rt: Runtime) -> None:
        rt.spawn(ignores_stop(), "stubborn")
        rt.spawn(crashes(), "crashes")

    assert await runtime.serve("test", QUIET, body) == 1
    assert cancelled.is_set()


def test_startup_error_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    async def body(rt: Runtime) -> None:
        raise StartupError("capabilities", "CAP_BPF missing")

    assert runtime.run("test", QUIET, body) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flowscope test: start-up check capabilities failed: CAP_BPF missing"]


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET on the runtime's HTTP endpoint, errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_http_endpoint_serves_metrics_health_ready() -> None:
    settings = RuntimeSettings(http_address="127.0.0.1:0", drain_timeout=0.5)
    seen: dict[str, tuple[int, bytes]] = {}

    async def probe(rt: Runtime) -> None:
        rt.health.set("informers", False, "syncing")
        seen["ready-before"] = await asyncio.to_thread(get, rt.http_port, "/readyz")
        rt.health.set("informers", True)
        for path in ("/metrics", "/healthz", "/readyz"):
            seen[path] = await asyncio.to_thread(get, rt.http_port, path)

    async def body(rt: Runtime) -> None:
        from prometheus_client import Counter

        Counter("flowscope_test_things", "things", registry=rt.registry).inc(3)
        rt.spawn(probe(rt), "probe")

    assert await runtime.serve("test", settings, body) == 0
    assert seen["ready-before"][0] == 503 and b"syncing" in seen["ready-before"][1]
    assert seen["/readyz"][0] == 200
    assert seen["/healthz"][0] == 200
    assert b"flowscope_test_things_total 3.0" in seen["/metrics"][1]


async def test_readyz_says_draining_after_sigterm_while_healthz_stays_ok(
    stop_signals: None,
) -> None:
    """Before, /readyz answered 200 for the whole drain: an orchestrator kept a pod that
    was going away in its Service's endpoints."""
    settings = RuntimeSettings(http_address="127.0.0.1:0", drain_timeout=60)
    seen: dict[str, tuple[int, bytes]] = {}

    async def draining(rt: Runtime) -> None:
        """In-flight work that finishes once the endpoint has been probed mid-drain."""
        seen["before"] = await asyncio.to_thread(get, rt.http_port, "/readyz")
        os.kill(os.getpid(), signal.SIGTERM)
        await rt.stopping.wait()
        for path in ("/readyz", "/healthz"):
            seen[path] = await asyncio.to_thread(get, rt.http_port, path)

    async def body(rt: Runtime) -> None:
        rt.spawn(draining(rt), "draining")

    assert await runtime.serve("test", settings, body) == 0
    assert seen["before"][0] == 200
    status, report = seen["/readyz"]
    assert status == 503 and b"draining" in report
    assert seen["/healthz"][0] == 200
