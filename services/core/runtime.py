"""The lifecycle every flowscope service shares.

``run(name, settings, body)``: signals only set a flag; ``body`` sets up resources on the
runtime's exit stack and starts *root tasks*. If any root task ends — returns or raises —
the service stops. Stopping means: the ``stopping`` event is set (``/readyz`` answers
503 from then on, ``/healthz`` still 200), root tasks get ``drain_timeout`` seconds to
finish their work (flush, ack), then the rest are cancelled, and resources are released
in reverse order of acquisition. A stop while ``body`` is still starting gives it the
same deadline, then cancels it; a second signal cancels everything at once. A process
still running ``drain_timeout`` seconds after that deadline (a worker thread blocked in a
write to a pipe nobody reads, a task that ignores its cancellation) is ended at once with
exit status 1: the interpreter otherwise waits for such threads with no limit, and
ignores late signals (:func:`_ignore_late_signals`), so only SIGKILL ended it.

Exit status: 0 after a signal or a clean end, 1 when a root task crashed (logged with its
traceback: bugs crash loudly) or failed with a :class:`FlowscopeError` (one line: a
lost connection), 2 for a :class:`ConfigError` / :class:`StartupError`
raised while starting (one line, no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from flowscope.core import logs, serving
from flowscope.core.config import positive, setting
from flowscope.core.errors import ConfigError, FlowscopeError, StartupError
from flowscope.core.serving import Health
from prometheus_client import CollectorRegistry

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("flowscope.runtime")


def _address(value: str) -> str:
    if value:
        serving.parse_address(value)
    return value


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Settings every service has (flat: ``--log-format``, ``FLOWSCOPE_LOG_FORMAT``)."""

    log_format: str = setting("json", "log format on stderr", choices=("json", "text"))
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))
    http_address: str = setting(
        ":9090",
        "host:port serving /metrics, /healthz and /readyz (no host or [::]: every address of "
        "both families, IPv4 alone without IPv6; 0.0.0.0: IPv4 only; empty: no HTTP endpoint)",
        parse=_address,
    )
    drain_timeout: float = setting(
        10.0,
        "seconds to finish in-flight work after SIGTERM before it is cancelled; a process "
        "still running as long again after that exits at once with status 1; below half "
        "Kubernetes' default 30 s grace period so the drain completes",
        parse=positive,
    )


@dataclass
class Runtime:
    """What a service body gets: exit stack, stop flag, health, metrics registry."""

    name: str
    settings: RuntimeSettings
    stack: AsyncExitStack
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    health: Health = field(default_factory=Health)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    http_port: int = 0
    signalled: bool = False  # SIGTERM or SIGINT received: the process is to end
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _starting: asyncio.Future[None] | None = None  # the body, once started
    _first_done: asyncio.Event = field(default_factory=asyncio.Event)
    _on_stop: Callable[[], None] | None = None  # run() arms the hard stop with it

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a root task: when it ends, for any reason, the service stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda _: self._first_done.set())
        return task

    def stop(self) -> None:
        """Ask the service to stop (what SIGTERM does). Not ready from now on, while
        ``/healthz`` stays ok: Kubernetes takes the pod out of its Service's endpoints
        during the drain instead of routing work to a process about to exit."""
        self.health.set("stopping", False, "draining: finishing in-flight work, then exiting")
        if not self.stopping.is_set() and self._on_stop is not None:
            self._on_stop()
        self.stopping.set()
        self._first_done.set()

    async def wait_stopping(self) -> None:
        await self.stopping.wait()


Body = Callable[[Runtime], Awaitable[None]]


async def unless_stopped(rt: Runtime, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when the service is told to stop first (then
    cancelled): a SIGTERM while NATS is still unreachable at start-up ends the service."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(rt.stopping.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def first_of(*aws: Awaitable[object]) -> None:
    """Return when the first of ``aws`` completes (an event set, a sleep over); cancel
    the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def serve(
    name: str, settings: RuntimeSettings, body: Body, on_stop: Callable[[], None] | None = None
) -> int:
    """Run a service body to completion inside the event loop; returns the exit status.
    ``on_stop`` runs once, when the service begins to stop."""
    async with AsyncExitStack() as stack:
        rt = Runtime(name, settings, stack, _on_stop=on_stop)
        _install_signals(rt)
        if settings.http_address:
            runner, rt.http_port = await _serve_http(rt)
            stack.push_async_callback(runner.cleanup)
        # Not ready until the body has set everything up (and its own checks say so).
        rt.health.set("started", False, "starting")
        crashed = await _start(rt, body)
        rt.health.set("started", True, "started")
        if not rt._tasks and not rt._first_done.is_set():
            return 0  # nothing to run, nothing to stop
        await rt._first_done.wait()
        crashed += _crashed(rt)
        rt.stop()
        await _drain(rt)
        crashed += _crashed(rt, cancelled_ok=True)
        log.info("stopped", extra={"service": name})
        if rt.signalled:
            _ignore_late_signals()
        return 1 if crashed else 0
    return 0  # pragma: no cover - unreachable, keeps mypy happy


async def _serve_http(rt: Runtime) -> tuple[web.AppRunner, int]:
    """Start the HTTP endpoint; an address that cannot be listened on (in use, not this
    machine's, a name that does not resolve) is one line naming the setting, exit
    status 2, not a traceback."""
    address = rt.settings.http_address
    try:
        return await serving.start(address, rt.registry, rt.health)
    except OSError as e:
        problem = f"cannot listen on {address!r} (--http-address, FLOWSCOPE_HTTP_ADDRESS): {e}"
        raise StartupError("http_address", problem) from e


async def _start(rt: Runtime, body: Body) -> int:
    """Run ``body``, raising what it raises; returns how many root tasks failed meanwhile.
    Told to stop first (a signal, a root task ending), it has the drain deadline to notice
    (:func:`unless_stopped`), then is cancelled, as a second signal cancels it at once: a
    start-up blocked on a peer that never answers otherwise kept the process running
    until the orchestrator's SIGKILL."""
    crashed = 0
    rt._starting = starting = asyncio.ensure_future(body(rt))
    ended = asyncio.ensure_future(rt._first_done.wait())
    try:
        await asyncio.wait({starting, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            crashed = _crashed(rt)
            rt.stop()
            await asyncio.wait({starting}, timeout=rt.settings.drain_timeout)
            starting.cancel()
            await asyncio.wait({starting})
        if not starting.cancelled():
            starting.result()
        return crashed
    finally:
        ended.cancel()
        starting.cancel()


def _crashed(rt: Runtime, cancelled_ok: bool = False) -> int:
    """Log each finished root task that raised; returns how many did (once each)."""
    count = 0
    for task in [t for t in rt._tasks if t.done()]:
        rt._tasks.discard(task)
        if task.cancelled():
            continue
        exc = task.exception()
        if isinstance(exc, FlowscopeError):  # a failure the service names: one line
            count += 1
            log.error(f"root task {task.get_name()} failed: {exc}")
        elif exc is not None:
            count += 1
            log.error(f"root task {task.get_name()} crashed", exc_info=exc)
        elif not rt.stopping.is_set():
            log.info(f"root task {task.get_name()} ended; stopping")
    return count


async def _drain(rt: Runtime) -> None:
    pending = list(rt._tasks)
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=rt.settings.drain_timeout)
    if still:
        log.warning(
            "drain deadline passed; cancelling",
            extra={"tasks": sorted(t.get_name() for t in still)},
        )
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)


def _install_signals(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        rt.signalled = True
        if rt.stopping.is_set():
            log.warning("second signal: hard stop")
            for task in [*rt._tasks, rt._starting]:
                if task is not None:
                    task.cancel()
            return
        log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
        rt.stop()

    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)


def _ignore_late_signals() -> None:
    """Stopped on a signal, with nothing left to drain: ignore SIGTERM and SIGINT from now
    on. Closing the loop gives them back their default action, and the interpreter
    takes a while to exit after it: a second SIGTERM then (a supervisor's, or a user's
    impatient one) killed a process that had stopped cleanly, exit status 143 instead of 0."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def _arm_hard_stop(after: float) -> None:
    """End the process ``after`` seconds from now, whatever it is doing then (a daemon
    timer: a process that ends by itself first is not held back by it)."""

    def expire() -> None:
        # The line is written from another thread, waited for a moment only: stderr may
        # be the very pipe nobody reads.
        said = threading.Thread(target=_say_hard_stop, args=(after,), daemon=True)
        said.start()
        said.join(1.0)
        os._exit(1)

    timer = threading.Timer(after, expire)
    timer.daemon = True
    timer.start()


def _say_hard_stop(after: float) -> None:
    threads = sorted(t.name for t in threading.enumerate() if not t.daemon)
    log.error(
        f"still running {after:g} s after the stop began; exiting without finishing",
        extra={"threads": threads},
    )
    for handler in logging.getLogger().handlers:
        handler.flush()


def run(name: str, settings: RuntimeSettings, body: Body) -> int:
    """Entry point for a service: configure logs, run the loop, map errors to exit codes.
    Once the service begins to stop, it has twice ``drain_timeout`` to end, whatever
    holds it: the drain deadline, then as long again for cancelled work and clean-up."""
    logs.configure(settings.log_format, settings.log_level)
    hard_stop = functools.partial(_arm_hard_stop, 2 * settings.drain_timeout)
    try:
        return asyncio.run(serve(name, settings, body, on_stop=hard_stop))
    except (ConfigError, StartupError) as e:
        print(f"flowscope {name}: {e}", file=sys.stderr)
        return 2
    except FlowscopeError as e:
        log.error(str(e), exc_info=e)
        return 1
    except KeyboardInterrupt:
        return 0
