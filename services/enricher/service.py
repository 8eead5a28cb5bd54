"""The enricher service: `flowscope enricher`.

Wiring only: settings → metadata source (Kubernetes informers, or local mode) → join
state → NATS consumers → root tasks. See :mod:`consuming` for the message flow and
docs/enricher.md for the choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from flowscope.core import messaging
from flowscope.core.errors import ConfigError, StartupError, described
from flowscope.core.runtime import Runtime, first_of, run, serve
from flowscope.enricher import consuming, local
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.identities import Resolver
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.settings import Settings
from flowscope.enricher.watching import ApiHealth, Informer, Pulse, WatchSettings, resources
from nats.aio.client import Client as NATS

log = logging.getLogger("flowscope.enricher")
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
WARM_SLICE = 256  # identities built ahead per turn of the event loop (~1.3 ms)
# Seconds between two readings of a kubeconfig's credentials (client-go reads a tokenFile
# again as often; kubernetes-asyncio's in-cluster configuration reads its token so itself).
CREDENTIALS_EVERY = 60.0


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def main(settings: Settings) -> int:
    """Run the enricher until signalled; returns the exit status."""
    keep_freed_memory()
    return run("enricher", settings.runtime, lambda rt: body(rt, settings))


def keep_freed_memory() -> bool:
    """Have glibc keep what one raw batch frees for the next; False without glibc.

    Every raw batch allocates and frees a few MB, in blocks of 0.3 to 1.1 MB (the raw
    message, the framed output) and a thousand of ~1.1 KB (its lines). By default
    glibc serves blocks over a moving threshold with fresh mappings and gives a heap
    top over twice that back to the kernel as soon as it is free, to take it again
    for the next batch. Fixed thresholds (32 MB for mappings, 64 MB kept at the top)
    keep that memory in the heap; the periodic :func:`release_free_memory` still
    returns it every 30 s. Measured end to end (docs/performance-history.md: the same
    settings through glibc's environment variables, 2 alternating pairs): 6 to 15 % less
    CPU per raw batch, most of it inside the compiled core; resident memory unchanged.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 64 << 20))


def _glibc(function: str) -> Callable[..., int] | None:
    """A glibc function through ctypes, or None on a libc without it (musl, macOS)."""
    try:
        found: Callable[..., int] = getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):
        return None
    return found


async def serve_in_process(settings: Settings) -> int:
    """The service inside the caller's event loop (tests run replicas this way)."""
    return await serve("enricher", settings.runtime, lambda rt: body(rt, settings))


def kubeconfig_path(
    settings: Settings, env: dict[str, str] | None = None, *, home: bool = True
) -> str | None:
    """The kubeconfig to use: the setting, else KUBECONFIG, else (``home``) ~/.kube/config.

    KUBECONFIG may list several files (``os.pathsep``), merged as kubectl merges them:
    missing and empty files are skipped; the first file to name a cluster, user or context
    wins (kubernetes-asyncio's loader merges them so when given the list); the
    current-context is the first file's that sets one — the loader takes the last file's,
    so that file is listed once more at the end (merging it again adds nothing else).
    """
    env = dict(os.environ) if env is None else env
    if settings.kubeconfig:
        if not Path(settings.kubeconfig).is_file():
            raise ConfigError("--kubeconfig", f"{settings.kubeconfig} is not a readable file")
        return settings.kubeconfig
    files, current = [], None
    for candidate in dict.fromkeys((env.get("KUBECONFIG") or "").split(os.pathsep)):
        if not candidate or not Path(candidate).is_file():
            continue
        try:
            loaded = yaml.safe_load(Path(candidate).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError("KUBECONFIG", f"{candidate}: unreadable kubeconfig: {e}") from e
        if loaded is None:  # an empty file (the loader cannot merge it)
            continue
        if not isinstance(loaded, dict):
            raise ConfigError("KUBECONFIG", f"{candidate}: not a kubeconfig (no mapping)")
        files.append(candidate)
        if current is None and loaded.get("current-context"):
            current = candidate
    if current is not None and files[-1] != current:
        files.append(current)
    if files:
        return os.pathsep.join(files)
    default = Path.home() / ".kube" / "config"
    return str(default) if home and default.is_file() else None


def in_cluster(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and IN_CLUSTER_TOKEN.is_file()


async def kube_client(
    settings: Settings, *, credentials_every: float = CREDENTIALS_EVERY
) -> Any | None:
    """A kubernetes-asyncio ApiClient, or None for local mode (per ``kubernetes.mode``).

    A kubeconfig's credentials are read again every ``credentials_every`` seconds
    (:func:`_rereading`): the loader reads them once, and a rotated token — a
    ``tokenFile`` rewritten, an exec plugin's token expired — was answered 401 for ever.
    """
    mode = settings.kubernetes.mode
    if mode == "local":
        return None
    # --kubeconfig, else KUBECONFIG, else in-cluster, else ~/.kube/config.
    cluster = in_cluster()
    path = kubeconfig_path(settings, home=not cluster)
    if path is None and not cluster:
        if mode == "kubernetes":
            raise StartupError("kubernetes", "no kubeconfig and not running in a cluster")
        log.info("no Kubernetes found (no kubeconfig, not in a cluster): local mode")
        return None
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    try:
        if path is not None:
            loader = await config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
            configuration.refresh_api_key_hook = _rereading(loader, credentials_every)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except Exception as e:  # the loader raises several types for a bad file
        raise ConfigError("--kubeconfig", f"cannot load Kubernetes configuration: {e}") from e
    log.info("Kubernetes metadata from the API", extra={"server": configuration.host})
    return client.ApiClient(configuration)


def _rereading(loader: Any, every: float) -> Callable[[Any], Awaitable[None]]:
    """The client's hook before each request: the kubeconfig's credentials set again from
    ``loader`` when ``every`` seconds have passed since the last time (a ``tokenFile``
    read anew, an expired exec plugin token asked for again). A reading that fails keeps
    the credentials held: the requests go on, answered 401 if those are no longer good."""
    due = time.monotonic() + every

    async def refresh(configuration: Any) -> None:
        nonlocal due
        if time.monotonic() < due:
            return
        due = time.monotonic() + every
        try:
            await loader.load_and_set(configuration)
        except Exception as e:  # the loader raises several types (a file gone, a plugin failing)
            log.warning("cannot read the kubeconfig's credentials again; keeping the last",
                        extra={"error": described(e)})  # fmt: skip

    return refresh


async def body(rt: Runtime, settings: Settings) -> None:
    """Set everything up on the runtime's stack and start the root tasks."""
    rt.health.set("consumers", False, "starting")
    _check_ack_wait(settings)
    metrics = Metrics.create(rt.registry)
    api, inventory, resolver = await _metadata_source(rt, settings)
    enricher = build_enricher(settings, resolver)
    connection = await messaging.connect_service(rt, settings.nats, "enricher")
    if connection is None:
        return  # SIGTERM while NATS was still unreachable
    nc, js, streams = connection
    pipeline = await _start_pipeline(rt, nc, enricher, metrics, streams)
    rt.health.set("consumers", False, "waiting for join state and metadata")
    caught_up = await _start_state_feeds(rt, js, pipeline, settings.join.state_lookback)
    api_health = ApiHealth()
    if api is not None and inventory is not None:
        _start_informers(rt, settings, api, inventory, metrics, api_health)
        rt.spawn(_keep_warm(inventory, enricher, rt.stopping), "identities")
    else:
        rt.spawn(_refresh_local(resolver, rt.stopping), "local-addresses")
    rt.spawn(_start_work(rt, settings, pipeline, js, caught_up, inventory), "work")
    _start_upkeep(rt, settings, pipeline, metrics, inventory, api_health)


def _check_ack_wait(settings: Settings) -> None:
    """Refuse an ack wait within 1 s of the merge window: flow batches are held that long
    before their ack, so every one would be redelivered."""
    if settings.consumer.ack_wait <= settings.join.merge_window + 1:
        raise ConfigError(
            "--consumer-ack-wait",
            f"{settings.consumer.ack_wait}s must exceed the merge window "
            f"({settings.join.merge_window}s) by more than 1s, or every batch is redelivered",
        )


async def _metadata_source(
    rt: Runtime, settings: Settings
) -> tuple[Any | None, Inventory | None, Resolver]:
    """The Kubernetes API client (closed as the service stops) and the inventory its
    informers fill, or (local mode) neither; and the resolver over either."""
    api = await kube_client(settings)
    inventory: Inventory | None = None
    resolver: Resolver
    if api is not None:
        rt.stack.push_async_callback(api.close)
        resolver = inventory = Inventory(settings.kubernetes.deleted_grace)
    else:
        resolver = local.LocalResolver(await asyncio.to_thread(local.local_addresses))
    return api, inventory, resolver


async def _start_pipeline(
    rt: Runtime,
    nc: NATS,
    enricher: Enricher,
    metrics: Metrics,
    streams: messaging.StreamKeeper,
) -> consuming.Pipeline:
    """The pipeline, its publisher started (closed as the service stops) and its
    streams' state reported as the ``publishing`` check."""
    rt.health.set("publishing", True, "publishing")

    def report_streams(ready: bool, detail: str) -> None:
        rt.health.set("publishing", ready, detail)

    pipeline = consuming.Pipeline(nc, enricher, metrics, streams, report_streams)
    await pipeline.publisher.start()
    if not await pipeline.use_atomic():
        log.info("output streams do not allow atomic batches: one ack per message")
    rt.stack.push_async_callback(pipeline.publisher.close)
    return pipeline


async def _start_state_feeds(
    rt: Runtime, js: Any, pipeline: consuming.Pipeline, lookback: float
) -> asyncio.Event:
    """Subscribe the socket and DNS feeds (closed as the service stops) and spawn the
    root task that keeps them subscribed, reported as the ``state`` check; returns the
    event set once their replay has caught up."""
    rt.health.set("state", False, "replaying socket and DNS events")
    feeds = await consuming.state_feed(js, pipeline, lookback)
    rt.stack.push_async_callback(feeds.close)

    def report_feeds(alive: bool) -> None:
        detail = "socket and DNS feeds subscribed again" if alive else "socket or DNS feed lost"
        rt.health.set("state", alive, detail)

    rt.spawn(consuming.feed_loop(feeds, report_feeds, rt.stopping), "state-feeds")
    return feeds.caught_up


def _start_upkeep(
    rt: Runtime,
    settings: Settings,
    pipeline: consuming.Pipeline,
    metrics: Metrics,
    inventory: Inventory | None,
    api_health: ApiHealth,
) -> None:
    """Spawn the upkeep root task (every 2 s): consumer lag, expiries, the sweep of
    deleted objects, freed memory every 30 s, the Kubernetes gauges and check."""
    sweep = inventory.sweep if inventory is not None else (lambda: 0)

    ticks = itertools.count()

    def chores() -> None:
        sweep()
        if next(ticks) % 15 == 14:  # every 30 s: batches' garbage back to the OS
            release_free_memory()
        staleness = api_health.staleness()
        metrics.staleness.set(staleness)
        if inventory is not None:
            metrics.identities.set(inventory.cached)
            _report_kubernetes(rt, inventory, api_health, staleness)

    durables = {w.kind: f"{settings.consumer.durable}-{w.suffix}" for w in consuming.WORK}
    rt.spawn(consuming.upkeep_loop(pipeline, durables, chores, rt.stopping, 2.0), "upkeep")


def _report_kubernetes(
    rt: Runtime, inventory: Inventory, api_health: ApiHealth, staleness: float
) -> None:
    """The ``kubernetes`` check: synced, serving metadata ``staleness`` seconds old, or
    waiting for the first LISTs; with what the API refuses."""
    # What the API refuses (a 403 where RBAC lacks a resource) is what to fix.
    refused = api_health.refusals()
    if inventory.ready:
        # Still ready: the last known metadata keeps serving; the detail says how old.
        why = "refusing" if refused else "unreachable"
        detail = f"API {why} for {staleness:.0f}s; serving last known metadata"
        detail += f"; {refused}" if refused else ""
        rt.health.set("kubernetes", True, detail if staleness > 0 else "synced")
    else:
        pending = "first LIST of every resource pending"
        rt.health.set("kubernetes", False, f"{pending}; {refused}" if refused else pending)


def build_enricher(settings: Settings, resolver: Resolver) -> Enricher:
    """The join state, sized by the settings, over a metadata source."""
    join = settings.join
    enricher = Enricher(
        resolver,
        SocketTable(join.socket_max_entries, join.socket_grace),
        NameCache(join.dns_ttl_min, join.dns_ttl_max, join.dns_max_entries),
        Observers(join.observer_ttl),
        native=settings.native_core,
    )
    if enricher.native:
        log.info("flows enriched by the compiled core")
    elif settings.native_core:
        log.warning("compiled flow core not built (no C compiler at install): Python path")
    return enricher


def _start_informers(
    rt: Runtime,
    settings: Settings,
    api: Any,
    inventory: Inventory,
    metrics: Metrics,
    api_health: ApiHealth,
) -> None:
    k8s = settings.kubernetes
    watch = WatchSettings(k8s.page_size, k8s.watch_timeout, k8s.resync_backoff_max)
    rt.health.set("kubernetes", False, "first LIST of every resource pending")
    informers = []
    for resource in resources(k8s.label_keys):
        inventory.expected.add(resource.name)
        # 0 until its first full LIST: a resource still pending (a slow API, RBAC lacking
        # it) is a series to alert on, not an absent one.
        metrics.informer_synced.labels(resource.name).set(0)
        informer = Informer(api, resource, inventory, metrics, api_health, watch)
        rt.spawn(informer.run(rt.stopping), f"informer-{resource.name}")
        informers.append(informer)
    if k8s.probe_interval > 0:
        pulse = Pulse(api, api_health, informers, k8s.probe_interval)
        rt.spawn(pulse.run(rt.stopping), "kubernetes-pulse")


async def _start_work(
    rt: Runtime,
    settings: Settings,
    pipeline: consuming.Pipeline,
    js: Any,
    caught_up: asyncio.Event,
    inventory: Inventory | None,
) -> None:
    """Wait for the join state (replayed) and metadata (synced), then consume work.

    Enriching before then would publish records without names that a moment later
    would have had them.
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(caught_up.wait(), 30)
    rt.health.set("state", True, "socket and DNS events replayed")
    if inventory is not None:
        await first_of(inventory.became_ready.wait(), rt.stopping.wait())
        if inventory.ready:
            rt.health.set("kubernetes", True, "synced")
            await _warm(inventory, pipeline.enricher)  # the cluster's identities, first
            release_free_memory()
    c = settings.consumer
    lost: set[str] = set()

    def report(kind: str, subscribed: bool) -> None:
        (lost.discard if subscribed else lost.add)(kind)
        detail = f"making lost consumers again: {', '.join(sorted(lost))}" if lost else "consuming"
        rt.health.set("consumers", not lost, detail)

    loops = []
    for work in consuming.WORK:
        consumer = consuming.WorkConsumer(
            js, work, c, lambda: messaging.ensure_streams(js, settings.nats), report
        )
        await consumer.subscribe()
        hold = settings.join.merge_window if work.kind == "flow" else 0.0
        loops.append(consuming.work_loop(consumer, work.kind, pipeline, c, hold, rt.stopping))
    rt.health.set("consumers", True, "consuming")
    await asyncio.gather(*loops)


async def _keep_warm(inventory: Inventory, enricher: Enricher, stopping: asyncio.Event) -> None:
    """Build the identities that metadata changes leave cold (``Inventory.warm``), and
    hand them to the enricher's address table, so that flows find their addresses'
    identities built, until the service stops."""
    await first_of(inventory.became_ready.wait(), stopping.wait())
    while not stopping.is_set():
        await _warm(inventory, enricher)
        await first_of(inventory.cold.wait(), stopping.wait())


async def _warm(inventory: Inventory, enricher: Enricher) -> None:
    """Build every cold identity, a slice per turn of the event loop."""
    while True:
        built = inventory.warm(WARM_SLICE)
        if not built:
            return
        enricher.learn_addresses(built)
        await asyncio.sleep(0)  # the batches' turn


def release_free_memory() -> None:
    """Collect every generation, freeze what survived, and hand freed heap back to the
    OS (after the first LISTs, then every 30 s).

    The enricher's heap is mostly long-lived: the cluster's objects, identities, DNS
    names, socket owners (~150,000 tracked objects for 10,000 pods). Python's automatic
    collection of the oldest generation walks all of it — 30 to 90 ms each time, a
    dozen times while the first ~17,000 identities and 50,000 DNS names are built — to
    find nothing: that state holds no cycles. Frozen (``gc.freeze``), it is left out of
    the automatic collections; each call unfreezes it first, so every 30 s one full
    collection still finds any cycle among the old objects (nothing leaks for more
    than 30 s). Reference counting frees frozen objects as usual.

    glibc keeps freed memory in its arenas; the initial LIST of a large cluster and
    every decoded batch leave megabytes of garbage at once. No-op without glibc.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


async def _refresh_local(resolver: Resolver, stopping: asyncio.Event) -> None:
    """Re-read this machine's addresses every 30 s (interfaces come and go)."""
    assert isinstance(resolver, local.LocalResolver)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 30)
        with contextlib.suppress(OSError):
            resolver.update(await asyncio.to_thread(local.local_addresses))
