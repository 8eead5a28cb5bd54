"""Kubernetes informers: LIST, remember resourceVersion, WATCH, on 410 LIST again.

One :class:`Informer` per resource keeps the :class:`Inventory` current:

- LIST in pages (``limit`` / ``continue``); a 410 on a ``continue`` token (the snapshot
  expired) restarts the LIST. The complete result replaces the resource's store
  (objects gone since are deleted, with the grace period).
- WATCH from the list's resourceVersion with ``allowWatchBookmarks=true``; ADDED and
  MODIFIED upsert, DELETED deletes, BOOKMARK only advances the resourceVersion; an event
  whose object does not convert (counted as odd) deletes the object it names. Every
  applied event advances the resourceVersion, so a WATCH that ends (server timeout,
  broken stream — a partial last line is discarded) resumes exactly where it stopped.
- An ``ERROR`` event with a 410 Status (``Expired``/``Gone``), or a 410 response, means
  the resourceVersion is too old: LIST again — at once the first time, after the capped
  exponential backoff below when the LIST before it led to a 410 too without a single
  watch event with a resourceVersion applied in between (an API server that expires
  every version it hands out must not be re-LISTed in a loop).
- An ``ERROR`` event with a 504 Status whose cause is ``ResourceVersionTooLarge`` means
  the server is behind the resourceVersion held (etcd restored from an older backup, or
  its watch cache lagging): a WATCH from it will not succeed before the server catches
  up — after a restore, perhaps never, and then from a history missing every change
  since the backup — so LIST again as after a 410 (with the same backoff), as client-go's
  reflector does. So does an ``ERROR`` event of any other Status once
  :data:`WATCH_ERRORS_MAX` in a row have come from one resourceVersion: a server that
  cannot watch from it will not start to by being asked again.
- Any other failure (connection refused, 5xx, a LIST or a line of odd shape, a stream
  silent past :attr:`WatchSettings.silence_limit`) is counted and retried with capped
  exponential backoff; meanwhile the last known metadata keeps serving and
  :class:`ApiHealth` reports how stale it is — from the last word heard from the API,
  which also covers an API gone silent behind a partition (no error to notice). A WATCH
  answered 200 whose stream then fails before a single event (an ``ERROR`` event first,
  a broken stream) is no word: a server that errs on every WATCH must not look fresh.
- A :class:`Pulse` asks the API for ``/version`` every few seconds, so an API gone
  silent is noticed within seconds rather than after a quiet WATCH's silence limit
  (minutes), and when it answers again every open WATCH is renewed from its
  resourceVersion: a stream whose connection died in the partition would otherwise hang
  until its read timeout, missing every change meanwhile; an informer waiting out a
  backoff (grown while the API was away) tries again at once too.

Requests go through kubernetes-asyncio's ``ApiClient`` (its configuration, TLS and
authentication), with the body read raw and parsed by orjson straight into the slim
objects of :mod:`objects` — the generated models would cost several times the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from flowscope.core.errors import FlowscopeError, described
from flowscope.core.logs import RateLimitedLog
from flowscope.enricher import objects
from flowscope.enricher.inventory import Inventory, Obj, named_key, object_key
from flowscope.enricher.metrics import Metrics

log = logging.getLogger("flowscope.enricher.kubernetes")


class Expired(FlowscopeError):
    """The resourceVersion (or continue token) is too old: a full LIST is needed."""


class ApiError(FlowscopeError):
    """The API answered with an error (not 410) or an unreadable stream."""

    def __init__(self, resource: str, problem: str) -> None:
        self.resource = resource
        self.problem = problem
        super().__init__(f"{resource}: {problem}")


class Unwatchable(ApiError):
    """A WATCH error that only a LIST gets past; ``reason`` labels the relists metric."""

    def __init__(self, resource: str, reason: str, problem: str) -> None:
        self.reason = reason
        super().__init__(resource, problem)


BACKOFF_FIRST = 0.2  # seconds: the first backoff, doubled each time up to backoff_max
STATUS_MAX = 4096  # bytes of an error answer read for its Status (a Status is far smaller)
WATCH_ERRORS_MAX = 3  # ERROR events in a row from one resourceVersion before a LIST


class Convert(Protocol):
    """A resource's JSON → slim object (:mod:`objects`), naming the fields it left out
    in ``skipped`` (an address that is no IP address) when given a list."""

    def __call__(self, obj: Mapping[str, Any], skipped: list[str] | None = None, /) -> Obj: ...


@dataclass(frozen=True, slots=True)
class Resource:
    """A watched resource: informer name, list path, converter to a slim object."""

    name: str
    path: str
    convert: Convert


def resources(label_keys: tuple[str, ...]) -> tuple[Resource, ...]:
    """Every resource the enricher watches (cluster-wide)."""
    wl = objects.workload_from_json
    return (
        Resource(
            "pods",
            "/api/v1/pods",
            lambda o, skipped=None: objects.pod_from_json(o, label_keys, skipped),
        ),
        Resource("services", "/api/v1/services", objects.service_from_json),
        Resource(
            "endpointslices",
            "/apis/discovery.k8s.io/v1/endpointslices",
            objects.endpointslice_from_json,
        ),
        Resource("nodes", "/api/v1/nodes", objects.node_from_json),
        Resource("replicasets", "/apis/apps/v1/replicasets", wl("ReplicaSet")),
        Resource("deployments", "/apis/apps/v1/deployments", wl("Deployment")),
        Resource("statefulsets", "/apis/apps/v1/statefulsets", wl("StatefulSet")),
        Resource("daemonsets", "/apis/apps/v1/daemonsets", wl("DaemonSet")),
        Resource("jobs", "/apis/batch/v1/jobs", wl("Job")),
        Resource("cronjobs", "/apis/batch/v1/cronjobs", wl("CronJob")),
    )


@dataclass(slots=True)
class ApiHealth:
    """How old the metadata is: the time since each informer last heard from the API.

    A healthy informer hears something at least every ``silence_limit`` seconds (a LIST
    answered, a WATCH opened, an event or BOOKMARK, the server ending the stream at its
    timeout); a WATCH opened whose stream fails before its first event is retracted
    (:meth:`retract`): it brought nothing. So an informer is stale while its requests
    fail, or once its last word is older than that — the API silent behind a partition
    raises no error for a while — and staleness counts from its last word either way,
    not from when that was noticed.
    """

    clock: Callable[[], float] = time.monotonic
    heard: dict[str, float] = field(default_factory=dict)
    # The :class:`Pulse`: when the API last answered it, and since when it has not (None:
    # answering). While it does not, an informer that has heard nothing since is stale.
    answered: float = float("-inf")
    unanswered_since: float | None = None
    limits: dict[str, float] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    # failing resource → what the API answered instead (e.g. a 403 where RBAC lacks the
    # resource): none for requests that got no answer (the API unreachable or silent)
    refused: dict[str, str] = field(default_factory=dict)

    def expect(self, resource: str, silence_limit: float) -> None:
        """An informer starts: no word from the API yet, counted from now."""
        self.heard[resource] = self.clock()
        self.limits[resource] = silence_limit

    def heard_from(self, resource: str) -> float:
        """``resource`` heard from the API; returns when it was before (for :meth:`retract`)."""
        now = self.clock()
        before = self.heard.get(resource, now)
        self.heard[resource] = now
        self.failing.discard(resource)
        self.refused.pop(resource, None)
        return before

    def retract(self, resource: str, before: float) -> None:
        """The last word heard was no progress after all (a WATCH answered 200 whose
        stream then failed before a single event): ``resource`` was last heard from at
        ``before`` (what :meth:`heard_from` returned)."""
        self.heard[resource] = before

    def failed(self, resource: str, answer: str = "") -> None:
        """A request failed: ``answer`` is what the API answered, "" when nothing came."""
        self.failing.add(resource)
        if answer:
            self.refused[resource] = answer
        else:
            self.refused.pop(resource, None)

    def refusals(self) -> str:
        """The failing resources the API answers with an error, and its answers (for the
        readiness detail: what an operator must fix); "" when there are none."""
        return "; ".join(f"{r}: {self.refused[r]}" for r in sorted(self.refused))

    def pulse_answered(self) -> bool:
        """The API answered the pulse; True when it had stopped answering (a recovery)."""
        self.answered = self.clock()
        recovered = self.unanswered_since is not None
        self.unanswered_since = None
        return recovered

    def pulse_unanswered(self) -> bool:
        """The pulse got no answer; True when it is the first since the API answered."""
        if self.unanswered_since is None:
            self.unanswered_since = self.clock()
            return True
        return False

    def staleness(self) -> float:
        """Seconds since the stalest informer last heard from the API (0: none is).

        An informer stale only because the pulse goes unanswered counts from the later of
        its last word and the pulse's last answer: a quiet WATCH's metadata was as good
        as the API's when the API last answered."""
        now = self.clock()
        stale = [now - self._stale_since(r, at, now) for r, at in self.heard.items()]
        return max(stale, default=0.0)

    def _stale_since(self, resource: str, heard: float, now: float) -> float:
        """Since when ``resource`` is stale; ``now`` when it is not."""
        if resource in self.failing or now - heard > self.limits[resource]:
            return heard
        if self.unanswered_since is not None and heard < self.unanswered_since:
            return max(heard, self.answered)
        return now


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """What the informers need from the settings."""

    page_size: int
    watch_timeout: int
    backoff_max: float

    @property
    def silence_limit(self) -> float:
        """The longest a healthy WATCH stays silent: the server ends it after
        ``watch_timeout`` (plus a margin for a busy server); a stream silent for longer
        is given up as dead (its read timeout) and the metadata counts as stale."""
        return self.watch_timeout + max(2.0, self.watch_timeout / 10)


class Pulse:
    """GET ``/version`` every ``interval`` seconds (waiting as long for the answer): is
    the API answering? Its answers feed :class:`ApiHealth`; when the API answers again
    after it did not, every informer renews its WATCH (:meth:`Informer.renew`).

    ``/version`` is readable by any client (the ``system:public-info-viewer`` role), so
    it needs no RBAC rule; any HTTP answer below 500 counts as an answer (a 401 or 403
    still proves the API is there), a 5xx (a load balancer without a backend) does not.
    """

    def __init__(
        self, api: Any, health: ApiHealth, informers: list[Informer], interval: float
    ) -> None:
        self.api = api
        self.health = health
        self.informers = informers
        self.interval = interval

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            problem = await self.ask()
            if not problem:
                if self.health.pulse_answered():
                    log.info("Kubernetes API answering again; watches renewed")
                    for informer in self.informers:
                        informer.renew()
            elif self.health.pulse_unanswered():
                log.warning("Kubernetes API not answering; serving last known metadata",
                            extra={"error": problem})  # fmt: skip
            await _sleep_unless_stopped(self.interval, stopping)

    async def ask(self) -> str:
        """One pulse: "" when the API answered, else what went wrong."""
        try:
            resp = await self.api.call_api(
                "/version",
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=self.interval,
            )
            try:
                await resp.read()
            finally:
                resp.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return described(e)
        return f"/version answered HTTP {resp.status}" if resp.status >= 500 else ""


class Informer:
    """LIST + WATCH one resource into the inventory, forever (until stopped)."""

    def __init__(
        self,
        api: Any,  # kubernetes_asyncio.client.ApiClient
        resource: Resource,
        inventory: Inventory,
        metrics: Metrics,
        health: ApiHealth,
        settings: WatchSettings,
    ) -> None:
        self.api = api
        self.resource = resource
        self.inventory = inventory
        self.metrics = metrics
        self.health = health
        self.settings = settings
        self.bad_log = RateLimitedLog(log)
        self.synced = asyncio.Event()
        # Imported here, not at module level: kubernetes-asyncio's client package loads
        # every generated model (~50 MB), which local mode never needs.
        from kubernetes_asyncio.client.exceptions import ApiException

        self._client_error: type[Exception] = ApiException
        # The resourceVersion to resume from: advanced by every applied event, so a
        # stream that breaks resumes where it stopped (None: LIST first).
        self.version: str | None = None
        # Re-LISTs (410s, too large versions, repeated ERRORs) since the last watch event
        # applied: from the second on, LIST after a backoff (BACKOFF_FIRST doubling up to
        # backoff_max), not at once.
        self.relists_in_a_row = 0
        # ERROR events (not 410) in a row from the resourceVersion held: at
        # WATCH_ERRORS_MAX, LIST again.
        self.watch_errors = 0
        self._renewing = asyncio.Event()  # set: end the open WATCH, resume from version
        health.expect(resource.name, settings.silence_limit)

    def renew(self) -> None:
        """End the open WATCH (if any), or the backoff waited out, and open another WATCH
        from the resourceVersion held (or LIST, when none is)."""
        self._renewing.set()

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = BACKOFF_FIRST
        name = self.resource.name
        while not stopping.is_set():
            try:
                if self.version is None:
                    self.version = await self._list()
                    self.watch_errors = 0
                    self.metrics.informer_synced.labels(name).set(1)
                    self.synced.set()
                opened = time.monotonic()
                self._renewing.clear()  # a renewal asked before this WATCH is this WATCH
                await _until_stopped(self._watch(self.version), stopping, self._renewing)
                if time.monotonic() - opened > 1.0:
                    backoff = BACKOFF_FIRST
                else:  # a server ending every stream at once must not make this spin
                    await self._pause(backoff, stopping)
                    backoff = min(backoff * 2, self.settings.backoff_max)
            except Expired:
                await self._relist("expired", stopping)
            except Unwatchable as e:
                self._failed(e)
                await self._relist(e.reason, stopping)
            except (aiohttp.ClientError, OSError, TimeoutError, ApiError, self._client_error) as e:
                self._failed(e)
                await self._pause(backoff, stopping)
                backoff = min(backoff * 2, self.settings.backoff_max)

    async def _pause(self, seconds: float, stopping: asyncio.Event) -> None:
        """Wait out a backoff — unless stopped, or a renewal is asked: the API answers again
        after it did not, and a backoff grown meanwhile (up to backoff_max) would keep this
        informer away that much longer. The renewal is taken (cleared) here: one attempt at
        once, not a backoff skipped for ever."""
        await _until_stopped(asyncio.sleep(seconds), stopping, self._renewing)
        self._renewing.clear()

    def _failed(self, e: Exception) -> None:
        name = self.resource.name
        self.metrics.informer_errors.labels(name).inc()
        self.health.failed(name, e.problem if isinstance(e, ApiError) else "")
        self.bad_log.warning(f"api-{name}", "Kubernetes API request failed",
                             resource=name, error=described(e))  # fmt: skip

    async def _relist(self, reason: str, stopping: asyncio.Event) -> None:
        """Drop the resourceVersion: LIST next — after a backoff when the LIST before it
        led here too with no watch event applied in between (nothing gained)."""
        self.metrics.relists.labels(self.resource.name, reason).inc()
        self.version = None
        self.relists_in_a_row += 1
        if self.relists_in_a_row > 1:
            await self._pause(self._relist_backoff(), stopping)

    def _relist_backoff(self) -> float:
        """The wait before the next LIST after consecutive re-LISTs (from the second on)."""
        doublings = min(self.relists_in_a_row - 2, 32)
        return float(min(BACKOFF_FIRST * 2**doublings, self.settings.backoff_max))

    async def _request(self, query: list[tuple[str, Any]], read_timeout: float) -> Any:
        return await self.api.call_api(
            self.resource.path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=(10, read_timeout),
        )

    async def _list(self) -> str:
        """A complete, paginated LIST; replaces the store; returns its resourceVersion."""
        items: list[Obj] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self.settings.page_size)]
            if token:
                query.append(("continue", token))
            resp = await self._request(query, 60)
            try:
                if resp.status == 410:
                    raise Expired(f"{self.resource.name}: continue token expired")
                if resp.status != 200:
                    raise await self._refusal("LIST", resp)
                page = _json(await resp.read(), self.resource.name)
            finally:
                resp.release()
            raw_items, token, version = _envelope(page, self.resource.name)
            self.health.heard_from(self.resource.name)
            items += self._convert_all(raw_items)
            if not token:
                break
        self.inventory.replace(self.resource.name, items)
        self.inventory.mark_synced(self.resource.name)
        self.metrics.informer_objects.labels(self.resource.name).set(
            self.inventory.count(self.resource.name)
        )
        return version

    async def _refusal(self, verb: str, resp: Any) -> ApiError:
        """The error for an answer other than 200 or 410, with the reason and message of
        the Status it carries (``403 Forbidden: … cannot list resource …``): what the
        readiness detail shows an operator."""
        problem = f"{verb} answered HTTP {resp.status}"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            problem += _status_text(await resp.content.read(STATUS_MAX))
        return ApiError(self.resource.name, problem)

    def _convert_all(self, raw_items: list[Any]) -> list[Obj]:
        out = []
        for raw in raw_items:
            obj = self._convert(raw)
            if obj is not None:
                out.append(obj)
        return out

    def _convert(self, raw: Any) -> Obj | None:
        name = self.resource.name
        skipped: list[str] = []
        try:
            if not isinstance(raw, Mapping):
                raise objects.OddObject(name, "not an object")
            obj = self.resource.convert(raw, skipped)
        except objects.OddObject as e:
            self.metrics.odd_objects.labels(name).inc()
            self.bad_log.warning(f"odd-{name}", "Kubernetes object skipped",
                                 resource=name, problem=e.problem)  # fmt: skip
            return None
        if skipped:  # kept without the odd fields: counted as an odd object all the same
            self.metrics.odd_objects.labels(name).inc()
            where = getattr(obj, "namespace", "")
            self.bad_log.warning(f"odd-field-{name}", "Kubernetes object field skipped",
                                 resource=name, object=f"{where}/{obj.name}".lstrip("/"),
                                 problem="; ".join(skipped))  # fmt: skip
        return obj

    async def _watch(self, version: str) -> None:
        """One WATCH stream from ``version``; each applied event advances ``self.version``.

        The WATCH answered counts as a word from the API until its stream fails before
        a single event applied (an ERROR event first, a broken stream): then it is
        retracted. A stream ended by this side (a renewal, stopping) keeps it."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", self.settings.watch_timeout),
        ]
        if version:
            query.append(("resourceVersion", version))
        # The read timeout bounds the silence between two chunks: a stream the server
        # neither feeds nor ends (a partition, a frozen server) is given up.
        resp = await self._request(query, self.settings.silence_limit)
        name = self.resource.name
        try:
            if resp.status == 410:
                raise Expired(f"{name}: resourceVersion {version} expired")
            if resp.status != 200:
                raise await self._refusal("WATCH", resp)
            before = self.health.heard_from(name)
            await self._stream(resp, version, before)
            self.health.heard_from(name)  # the server ended the stream (its timeout)
        finally:
            resp.release()

    async def _stream(self, resp: Any, version: str, before: float) -> None:
        """Apply a WATCH stream's events, each heard from the API, until it ends; when it
        fails before one is applied, the WATCH answered was no word (heard ``before``)."""
        name = self.resource.name
        applied = False
        buffer = b""
        try:
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.version = self._apply(_json(line, name), version)
                        version = self.version
                        applied = True
                        self.health.heard_from(name)
        except Exception:
            if not applied:
                self.health.retract(name, before)
            raise
        # A partial last line (stream broken mid-event) is dropped: the event was not
        # applied, so resuming from ``version`` receives it again.

    def _apply(self, event: Mapping[str, Any], version: str) -> str:
        """Apply one watch event; returns the resourceVersion to resume from."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise ApiError(self.resource.name, f"watch event without object: {kind}")
        if kind == "ERROR":
            raise self._error_event(obj)
        name = self.resource.name
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, Mapping) else {}
        new_version = meta.get("resourceVersion")
        if not isinstance(new_version, str) or not new_version:
            # An odd version must not become the resume point, nor count as progress: a
            # server sending a BOOKMARK without one before each 410 would be re-LISTed
            # without a pause.
            new_version = version
        else:
            self.relists_in_a_row = 0  # the version is good: a 410 after this relists at once
            self.watch_errors = 0
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            converted = self._convert(obj)
            if converted is None:
                self._unreadable(obj)
            elif kind == "DELETED":
                self.inventory.delete(name, object_key(name, converted))
            else:
                self.inventory.upsert(name, converted)
        elif kind != "BOOKMARK":
            raise ApiError(name, f"unknown watch event type {kind!r}")
        self.metrics.informer_events.labels(name, str(kind)).inc()
        self.metrics.informer_objects.labels(name).set(self.inventory.count(name))
        return new_version

    def _error_event(self, status: Mapping[str, Any]) -> Exception:
        """What an ERROR event's Status means: 410, the version expired; 504 too large,
        the server behind it; any other, an error retried — until it is the
        WATCH_ERRORS_MAX-th in a row from the same version."""
        name = self.resource.name
        code = status.get("code")
        if code == 410:
            return Expired(f"{name}: {status.get('message', 'expired')}")
        problem = f"watch ERROR {code}: {status.get('message')}"
        if _too_large(status):
            return Unwatchable(name, "too_large", problem)
        self.watch_errors += 1
        if self.watch_errors >= WATCH_ERRORS_MAX:
            return Unwatchable(name, "watch_errors", problem)
        return ApiError(name, problem)

    def _unreadable(self, obj: Mapping[str, Any]) -> None:
        """An event's object did not convert (counted): the version held is outdated and
        its successor unreadable, so the object counts as deleted (with the grace) — as
        the next LIST, which skips it, would have it; a readable version brings it back.
        An object that names nothing changes nothing."""
        named = objects.name_from_json(obj)
        if named is not None:
            self.inventory.delete(self.resource.name, named_key(self.resource.name, *named))


async def _sleep_unless_stopped(seconds: float, stopping: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def _until_stopped(work: Coroutine[Any, Any, None], *stopping: asyncio.Event) -> None:
    """Run ``work`` until it ends or one of ``stopping`` is set (a quiet WATCH may last
    minutes)."""
    task = asyncio.ensure_future(work)
    stops = [asyncio.ensure_future(event.wait()) for event in stopping]
    try:
        await asyncio.wait((task, *stops), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for stop in stops:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


def _envelope(page: Mapping[str, Any], resource: str) -> tuple[list[Any], str, str]:
    """A LIST page's items, continue token and resourceVersion (missing: none).

    A page of odd shape is an API error (retried), not a crash of the informer."""
    items = page.get("items") or []
    meta = page.get("metadata") or {}
    if not isinstance(items, list) or not isinstance(meta, Mapping):
        raise ApiError(resource, "LIST answer of odd shape (items, metadata)")
    token = meta.get("continue") or ""
    version = meta.get("resourceVersion") or ""
    if not isinstance(token, str) or not isinstance(version, str):
        raise ApiError(resource, "LIST answer of odd shape (continue, resourceVersion)")
    return items, token, version


def _too_large(status: Mapping[str, Any]) -> bool:
    """A Status saying the resourceVersion asked for is newer than the server's: a 504
    whose cause is ``ResourceVersionTooLarge`` or, from servers older than that cause,
    whose message says so (as client-go's ``isTooLargeResourceVersionError``)."""
    if status.get("code") != 504:
        return False
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    if isinstance(causes, list) and any(
        isinstance(c, Mapping) and c.get("reason") == "ResourceVersionTooLarge" for c in causes
    ):
        return True
    message = status.get("message")
    return isinstance(message, str) and "Too large resource version" in message


def _status_text(body: bytes) -> str:
    """`` <reason>: <message>`` of a ``meta/v1 Status`` body; "" for any other body."""
    with contextlib.suppress(orjson.JSONDecodeError):
        status = orjson.loads(body)
        if isinstance(status, dict) and status.get("kind") == "Status":
            reason, message = status.get("reason"), status.get("message")
            text = f" {reason}" if isinstance(reason, str) and reason else ""
            if isinstance(message, str) and message:
                text += f": {message[:512]}"  # a readiness detail: bounded
            return text
    return ""


def _json(body: bytes, resource: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(resource, f"unreadable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ApiError(resource, "expected a JSON object")
    return data
