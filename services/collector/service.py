"""The collector service: `flowscope collector`.

Start-up: checks (exit 2 on failure) → the network namespace claimed (waiting while
another collector runs there) → NATS (retrying, logged) → compile and load the flow
program (ABI checked) → remove filters a crashed earlier run left → attach to the
selected interfaces and watch for new ones → root tasks:

- ``link-watching``: attaches new interfaces, forgets removed ones;
- ``producing``: drains the flow map every active timeout, reads DNS packets and socket
  events; on stop it detaches the filters, drains one
  last time with ``forced_end`` and tells the publisher it is done;
- ``publishing``: batches to ``flowscope.raw.<kind>.<node>`` (recreating the streams if
  NATS comes back without them) and flushes at the end.

Calls that may take long and cannot be split (compiling, attaching) run in worker
threads so the event loop keeps serving metrics and NATS. Draining and socket events run
in the loop thread in small steps (a 4096-entry chunk, one ring-buffer read), yielding
between them: handing their records from a worker to the loop cost GIL hand-overs and
wake-ups (same-run A/B at 50k flows/s: 12.7-15.8 -> 12.2-14.3 % of a core for the drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
from typing import Any

from flowscope.collector import checks
from flowscope.collector.attaching import Attacher
from flowscope.collector.cache_reading import membarrier_global_available
from flowscope.collector.conntrack import Conntrack, ConntrackUnavailable
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.dns_parsing import DnsExchanges, DnsParseError
from flowscope.collector.dns_reading import DnsReader
from flowscope.collector.draining import BatchReader, DirectionMemory, Drainer, TickClock
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.loading import (
    FlowProgram,
    FlowProgramConfig,
    load_flow_program,
    release_compiler_memory,
)
from flowscope.collector.metrics import CollectorMetrics, SocketSnapshotMetrics, read_counters
from flowscope.collector.nat_pairing import NatPairing
from flowscope.collector.publishing import Publisher, PublishLimits
from flowscope.collector.settings import Settings
from flowscope.collector.socket_snapshotting import SnapshotLimits, SocketSnapshot
from flowscope.collector.socket_tracing import SocketTracer
from flowscope.core import runtime
from flowscope.core.errors import StartupError
from flowscope.core.messaging import connect_service
from flowscope.core.records import RawDns

log = logging.getLogger("flowscope.collector")

SOCKET_READ_PAUSE = 0.05  # s after a read that found socket events: they gather meanwhile
SOCKET_IDLE_WAIT = 1.0  # s at most between reads while none arrive (the lost-event count)
SNAPSHOT_CHUNK = 1000  # snapshot records submitted between waits for the publisher
# An abstract unix socket name: abstract names are per network namespace, like TC filters,
# and the kernel frees one when its process ends however it ends (SIGKILL, OOM kill).
INSTANCE_NAME = b"\0flowscope-collector"
INSTANCE_RETRY = 1.0  # s between attempts to claim the namespace while another collector runs


def node_name(settings: Settings, env: dict[str, str] | None = None) -> str:
    """The configured node name, else env NODE_NAME (Kubernetes downward API), else host name."""
    env = dict(os.environ) if env is None else env
    return settings.node_name or env.get("NODE_NAME") or socket.gethostname()


def program_config(settings: Settings) -> FlowProgramConfig:
    cache_slots = settings.flows.cache_slots
    if cache_slots and not membarrier_global_available():
        log.warning(
            "membarrier(MEMBARRIER_CMD_GLOBAL) is unavailable: the flow cache is off, every "
            "packet is counted in the flow map",
            extra={"cache_slots": cache_slots},
        )
        cache_slots = 0
    return FlowProgramConfig(
        max_flows=settings.flows.max_entries,
        cache_slots=cache_slots,
        dns_port=settings.dns.port,
        dns_capture_len=settings.dns.capture_bytes,
        dns_ringbuf_pages=settings.dns.ring_buffer_pages,
        tunnel_ports=settings.flows.tunnel_ports,
    )


def main(settings: Settings) -> int:
    """Run the collector until signalled; returns the exit status."""
    return runtime.run("collector", settings.runtime, lambda rt: body(rt, settings))


async def body(rt: runtime.Runtime, settings: Settings) -> None:
    """Acquire everything on the runtime's exit stack and start the root tasks."""
    checks.run_all()
    claim = await claim_namespace(rt)
    if claim is None:
        return  # SIGTERM while another collector still ran here: nothing was started
    rt.stack.callback(claim.close)  # first in, last out: after the filters are removed
    node = node_name(settings)
    if settings.flows.idle_timeout >= settings.flows.active_timeout:
        log.warning(
            "flows.idle_timeout is not below flows.active_timeout: the map is emptied at "
            "every drain, so no flow will end with idle_timeout"
        )
    metrics = CollectorMetrics.create(rt.registry)
    connection = await connect_service(rt, settings.nats, "collector")
    if connection is None:
        return  # SIGTERM while NATS was still unreachable: nothing to drain
    nc, js, streams = connection

    program, attacher, watcher = await start_kernel(rt, settings, metrics)
    attached = await asyncio.to_thread(
        watcher.start, functools.partial(remove_leftovers, attacher, metrics)
    )
    publisher = Publisher(
        js,
        node,
        publish_limits(settings, nc.max_payload),
        metrics,
        streams,
    )
    producers_done = asyncio.Event()
    producing = Producing(rt, settings, node, program, attacher, publisher, metrics)
    await producing.open_socket_tracing(node)
    release_compiler_memory()
    rt.spawn(watcher.run(rt.stopping), "link-watching")
    rt.spawn(producing.run(producers_done), "producing")
    rt.spawn(publisher.run(producers_done, settings.runtime.drain_timeout / 2), "publishing")
    noun = "interface" if attached == 1 else "interfaces"
    rt.health.set("collector", True, f"{attached} {noun} attached")
    log.info("collector started", extra={"node": node, "interfaces": attached})


async def claim_namespace(rt: runtime.Runtime) -> socket.socket | None:
    """Bind :data:`INSTANCE_NAME`, waiting while another collector holds it; None when
    told to stop first.

    Two collectors in one network namespace (a DaemonSet's surge update, a second
    deployment) use the same filter priority and handle: the second removed the first's
    filters as leftovers of a crashed run, and whichever stopped first removed the
    other's. The second now starts once the first has stopped and removed its filters
    (it releases the name last), and takes over.
    """
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if bound(claim):
            return claim
        log.warning("another collector runs in this network namespace; waiting for it to stop")
        while not rt.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stopping.wait(), INSTANCE_RETRY)
            if not rt.stopping.is_set() and bound(claim):
                return claim
    except BaseException:
        claim.close()
        raise
    claim.close()
    return None


def bound(claim: socket.socket) -> bool:
    """Bind ``claim`` to :data:`INSTANCE_NAME`; False while another process holds it."""
    try:
        claim.bind(INSTANCE_NAME)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        raise StartupError("instance", f"cannot bind {INSTANCE_NAME!r}: {e}") from e
    return True


async def start_kernel(
    rt: runtime.Runtime, settings: Settings, metrics: CollectorMetrics
) -> tuple[FlowProgram, Attacher, LinkWatcher]:
    """Load the flow program, prepare attaching and link watching.

    Released in reverse on stop: link watching, filters (detach), netlink, program.
    """
    program = await asyncio.to_thread(load_flow_program, program_config(settings))
    rt.stack.callback(program.close)
    # Before the socket programs are compiled too: keeps the start-up peak RSS lower
    # (the two compilations' heaps do not add up).
    release_compiler_memory()
    attacher = Attacher(
        program.ingress_fd,
        program.egress_fd,
        ingress_ip_fd=program.ingress_ip_fd,
        egress_ip_fd=program.egress_ip_fd,
    )
    rt.stack.callback(attacher.close)
    rt.stack.callback(attacher.detach_all)
    selection = InterfaceSelection(
        settings.interfaces.include, settings.interfaces.exclude, settings.interfaces.skip_bridges
    )
    watcher = LinkWatcher(attacher, selection, metrics)
    rt.stack.callback(watcher.close)
    metrics.map_capacity.set(settings.flows.max_entries)
    return program, attacher, watcher


def publish_limits(settings: Settings, max_payload: int) -> PublishLimits:
    return PublishLimits(
        batch_max_records=settings.publish.batch_max_records,
        batch_max_delay=settings.publish.batch_max_delay,
        buffer_bytes=settings.publish.buffer_bytes,
        max_payload=max_payload,
    )


def remove_leftovers(attacher: Attacher, metrics: CollectorMetrics, indexes: list[int]) -> None:
    """Remove filters of an earlier run that did not clean up (SIGKILL, OOM kill) from
    the links ``indexes``: the watcher's start listing, before it attaches."""
    removed = attacher.remove_leftovers(indexes)
    metrics.leftover_filters_removed.inc(removed)
    log.info(
        f"removed {removed} leftover TC filters of an earlier run",
        extra={"leftover_filters_removed": removed},
    )


class Producing:
    """The producer root task: flow drains, DNS packets, socket events."""

    def __init__(
        self,
        rt: runtime.Runtime,
        settings: Settings,
        node: str,
        program: FlowProgram,
        attacher: Attacher,
        publisher: Publisher,
        metrics: CollectorMetrics,
    ) -> None:
        self._rt = rt
        self._settings = settings
        self._program = program
        self._attacher = attacher
        self._publisher = publisher
        self._metrics = metrics
        capacity = max(1024, settings.flows.max_entries * 2)
        self._drainer = Drainer(
            BatchReader(program.flows.map_fd, min(4096, settings.flows.max_entries)),
            TickClock(program.clock_pair),
            node,
            settings.flows.idle_timeout,
            DirectionMemory(capacity),
            pairing=nat_pairing(rt) if settings.flows.nat_pairing else None,
            cache=program.cache,
        )
        self._dns = start_dns_reading(program, node, publisher, metrics)
        self._sockets: SocketTracer | None = None
        self._snapshot: SocketSnapshot | None = None

    async def open_socket_tracing(self, node: str) -> None:
        """Compile and attach the socket-owner programs (StartupError on failure)."""
        sockets = self._settings.sockets
        tracer = SocketTracer(
            node,
            ContainerResolver(),
            self._rt.registry,
            accept_hook=sockets.accept_hook,
            snapshot_max=sockets.snapshot_max_sockets if sockets.snapshot else 0,
        )
        await asyncio.to_thread(tracer.open)
        self._rt.stack.callback(tracer.close)
        self._sockets = tracer
        if sockets.snapshot:
            limits = SnapshotLimits(sockets.snapshot_max_sockets, sockets.snapshot_timeout)
            metrics = SocketSnapshotMetrics.create(self._rt.registry)
            self._snapshot = SocketSnapshot(node, metrics, limits)

    async def run(self, done: asyncio.Event) -> None:
        try:
            tasks = [asyncio.create_task(self._drain_loop(), name="draining")]
            tasks.append(asyncio.create_task(self._dns.run(self._rt.stopping), name="dns"))
            if self._sockets is not None:
                tasks.append(asyncio.create_task(self._socket_loop(self._sockets), name="sockets"))
            if self._snapshot is not None:
                tasks.append(
                    asyncio.create_task(self._take_snapshot(self._snapshot), name="snapshot")
                )
            await asyncio.gather(*tasks)
        finally:
            done.set()

    async def _drain_loop(self) -> None:
        stopping = self._rt.stopping
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self._settings.flows.active_timeout)
            except TimeoutError:
                await self._drain(forced=False)
        # Detach first so nothing is counted after the last drain.
        await asyncio.to_thread(self._attacher.detach_all)
        await self._drain(forced=True)

    async def _socket_loop(self, tracer: SocketTracer) -> None:
        """Socket events until stopping, read in the event loop thread.

        Reading does not block (the ring buffer is read from its mapped pages, or
        consumed by bcc without waiting), so there is no worker thread: handing each
        read's events from a worker to the loop cost a GIL hand-over and a loop
        wake-up. After a read that found events the loop pauses SOCKET_READ_PAUSE so
        the next read takes a batch (fewer, larger reads: 20 -> 50 ms took the
        collector from 4.2-4.4 to 3.4-3.5 % of a core at 10k events/s), unless the
        read took half the ring buffer or more (2 MiB hold ~20 000 events: no pause
        above ~200 000 events/s); when none came it sleeps until the ring buffer's fd
        is readable.
        """
        stopping = self._rt.stopping
        half = tracer.capacity // 2
        while not stopping.is_set():
            lines = tracer.read_lines()
            if lines:
                self._publisher.submit_lines("sockets", lines)
                if len(lines) >= half:
                    await asyncio.sleep(0)  # let the loop run, then read again
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), SOCKET_READ_PAUSE)
            else:
                await readable(tracer.fileno(), stopping, SOCKET_IDLE_WAIT)
        self._publisher.submit_lines("sockets", tracer.read_lines())

    async def _take_snapshot(self, snapshot: SocketSnapshot) -> None:
        """Report the connections that existed before the socket hooks were attached.

        Runs once, after the hooks are attached (a connection made meanwhile is reported
        by them too; the enricher keeps one owner per 5-tuple), reading /proc in a worker
        thread, then hands the records to the publisher in chunks, waiting while its
        buffer is half full, so a node with many connections does not overflow it.
        """
        records = await asyncio.to_thread(snapshot.take)
        if self._sockets is not None:  # one map update each: off the event loop
            await asyncio.to_thread(self._sockets.watch_closes, records)
        for start in range(0, len(records), SNAPSHOT_CHUNK):
            self._publisher.submit("sockets", records[start : start + SNAPSHOT_CHUNK])
            await self._publisher.catch_up("sockets")

    async def _drain(self, forced: bool) -> None:
        """Empty the flow map chunk by chunk in the event loop thread, letting the loop
        run between chunks (4096 entries, a few ms each) and waiting there while the
        publisher's buffer is more than half full of flows it is still sending."""
        entries = 0
        if self._drainer.cache is not None:
            # A grace period (a few ms): not in the event loop's thread.
            await asyncio.to_thread(self._drainer.cache.advance)
        # The other flow map made active, after a grace period (~10 ms): not in the loop.
        await asyncio.to_thread(self._drainer.reader.retire)
        for lines in self._drainer.drain_chunks(forced):
            self._publisher.submit_lines("flows", lines)
            entries += len(lines)
            await asyncio.sleep(0)
            await self._publisher.catch_up("flows")
        self._metrics.drains.inc()
        self._metrics.flows_drained.inc(entries)
        if self._drainer.pairing is not None:
            self._metrics.observe_nat(self._drainer.pairing.take_tally())
        self._metrics.map_entries.set(self._drainer.map_entries)
        self._metrics.observe_kernel(read_counters(self._program.counters))


def nat_pairing(rt: runtime.Runtime) -> NatPairing | None:
    """Pairing of NAT'ed halves through this network namespace's conntrack; None (one
    log line) when ctnetlink cannot be opened: flows are then published unpaired."""
    try:
        conntrack = Conntrack()
    except ConntrackUnavailable as e:
        log.warning(f"{e}: NAT pairing is off; NAT'ed connections stay two one-way records")
        return None
    rt.stack.callback(conntrack.close)
    return NatPairing(conntrack)


async def readable(fd: int, stopping: asyncio.Event, at_most: float) -> None:
    """Until ``fd`` is readable, ``stopping`` is set or ``at_most`` s passed."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:  # called while the fd stays readable, until removed
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    stop: asyncio.Future[bool] = asyncio.ensure_future(stopping.wait())
    waits: set[asyncio.Future[Any]] = {ready, stop}
    try:
        await asyncio.wait(waits, timeout=at_most, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(fd)
        stop.cancel()
        ready.cancel()


def start_dns_reading(
    program: FlowProgram, node: str, publisher: Publisher, metrics: CollectorMetrics
) -> DnsReader:
    """Read captured DNS packets, pair queries with responses, publish to raw.dns."""

    def emit(records: list[RawDns]) -> None:
        publisher.submit("dns", [r.to_wire() for r in records])

    return DnsReader(
        program.bpf,
        program.dns_events,
        program.config.dns_capture_len,
        DnsExchanges(node),
        emit,
        metrics,
        (DnsParseError,),
    )
