"""A stop while the body is still starting: the body gets the drain deadline to notice
the stop, then is cancelled, and a second signal cancels it at once. Before, the body
was never cancelled: a start-up blocked on a peer that never answers kept the process
running through any number of SIGTERMs, until the orchestrator's SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from flowscope.core import runtime
from flowscope.core.errors import FlowscopeError
from flowscope.core.runtime import Runtime, RuntimeSettings

# A service whose start-up awaits a connection that never comes, in a wait that does not
# watch the stop flag; prints what its resources and root task do.
BLOCKED = """
import asyncio, sys
from flowscope.core import runtime

async def body(rt):
    came = asyncio.Event()
    server = await asyncio.start_server(lambda r, w: came.set(), "127.0.0.1", 0)
    rt.stack.callback(print, "released", flush=True)
    rt.stack.callback(server.close)

    async def waits():
        await rt.stopping.wait()
        print("drained", flush=True)

    rt.spawn(waits(), "early")
    print("starting", flush=True)
    await came.wait()
    print("started", flush=True)

settings = runtime.RuntimeSettings(http_address="", log_level="error", drain_timeout=DRAIN)
sys.exit(runtime.run("t", settings, body))
"""


def stopped_while_starting(drain_timeout: float, signals: list[signal.Signals]) -> list[str]:
    """What a blocked start-up prints once sent ``signals``, and its exit status last;
    each signal after the first once the first has been handled (the root task drained),
    so the kernel cannot merge them into one."""
    code = BLOCKED.replace("DRAIN", repr(drain_timeout))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "starting\n"
        child.send_signal(signals[0])
        assert child.stdout.readline() == "drained\n"
        for sig in signals[1:]:
            child.send_signal(sig)
        status = child.wait(timeout=60)
        return [*child.stdout.read().split(), str(status)]
    finally:
        child.kill()
        child.wait()


def test_sigterm_while_starting_ends_a_blocked_start_up_after_the_drain_deadline() -> None:
    assert stopped_while_starting(0.2, [signal.SIGTERM]) == ["released", "0"]


def test_sigint_while_starting_ends_a_blocked_start_up_after_the_drain_deadline() -> None:
    assert stopped_while_starting(0.2, [signal.SIGINT]) == ["released", "0"]


def test_a_second_sigterm_while_starting_cancels_the_start_up() -> None:
    """The drain deadline (an hour) is not waited for: the second signal is a hard stop."""
    assert stopped_while_starting(3600, [signal.SIGTERM, signal.SIGTERM]) == ["released", "0"]


async def test_a_root_task_failing_while_starting_stops_the_start_up() -> None:
    """A root task started early (the NATS connection's watch) failing while the body
    still waits for something else: the service stops, exit status 1."""
    released: list[str] = []

    async def fails() -> None:
        raise FlowscopeError("NATS connection lost")

    async def body(rt: Runtime) -> None:
        rt.stack.callback(released.append, "resource")
        rt.spawn(fails(), "nats")
        await asyncio.Event().wait()  # a peer that never answers

    settings = RuntimeSettings(http_address="", drain_timeout=0.2)
    assert await asyncio.wait_for(runtime.serve("test", settings, body), 60) == 1
    assert released == ["resource"]


async def test_a_start_up_told_to_stop_ends_as_any_stop_does() -> None:
    """A body that notices the stop (``unless_stopped``) and returns: its root tasks are
    drained and later signals ignored, as after a stop once started."""
    before = {sig: signal.getsignal(sig) for sig in runtime.STOP_SIGNALS}
    drained: list[str] = []

    async def waits(rt: Runtime) -> None:
        await rt.stopping.wait()
        drained.append("early")

    async def body(rt: Runtime) -> None:
        rt.spawn(waits(rt), "early")
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)
        assert await runtime.unless_stopped(rt, asyncio.Event().wait()) is None

    try:
        settings = RuntimeSettings(http_address="", drain_timeout=3600)
        assert await asyncio.wait_for(runtime.serve("test", settings, body), 60) == 0
        assert drained == ["early"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, action in before.items():
            signal.signal(sig, action)
