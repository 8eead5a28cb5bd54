"""A fake Kubernetes API server over real HTTP, speaking the list/watch protocol exactly.

What a client sees is what an API server sends:

- ``GET <collection>`` LISTs with ``limit`` / ``continue`` pages of one consistent
  snapshot, ``metadata.resourceVersion`` on the list and on every object, ``kind`` /
  ``apiVersion`` on the list and its items. A continue token the test expired
  (:meth:`FakeKube.expire_continue_tokens`) answers ``410 Gone`` with an ``Expired``
  Status, as the real server does after compaction.
- ``GET <collection>?watch=true&resourceVersion=N`` streams chunked, newline-delimited
  JSON events ``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": ...}``: the
  events after N, then new ones as the test makes changes. ``allowWatchBookmarks``
  enables BOOKMARK events (:meth:`FakeKube.bookmark`); ``timeoutSeconds`` ends the
  stream. A resourceVersion older than the last :meth:`FakeKube.compact` gets an ERROR
  event with a ``410 Expired`` Status; one newer than the server's gets an ERROR event
  with the ``504 Timeout`` Status whose cause is ``ResourceVersionTooLarge``, as the
  watch cache sends (after waiting up to 3 s for itself to catch up; the fake answers
  at once).
- :meth:`FakeKube.snapshot` / :meth:`FakeKube.restore`: etcd backed up, then restored
  from that backup — objects and resourceVersion back as they were (a client's newer
  resourceVersion is now "too large"), history gone, open streams ended (the API
  servers restart on the restored etcd).
- :meth:`FakeKube.end_watches` ends every open stream cleanly;
  :meth:`FakeKube.break_watches` writes half an event line and drops the connection.
- :meth:`FakeKube.stop` / :meth:`FakeKube.start` take the server away and bring it
  back on the same port (the API unreachable, then recovered).
- :meth:`FakeKube.go_silent` / :meth:`FakeKube.speak_again`: the API silent (a network
  partition, a frozen server) — connections are accepted, nothing comes back — then
  answering again. :meth:`FakeKube.partition` is the same, except that the streams
  open when it starts never send again (their connections died in it: the server's side
  was reset, and its RST lost), as after a real partition.
- ``GET /version`` answers the server's version, or the Status of ``version_status`` when
  the test sets another code (silent too while the API is).
- Requests must carry ``Authorization: Bearer <token>`` (the token in the kubeconfig
  :meth:`FakeKube.write_kubeconfig` writes), else ``401``.
- :meth:`FakeKube.forbid` / :meth:`FakeKube.allow`: a resource's requests answered
  ``403`` with the ``Forbidden`` Status the API server sends when RBAC lacks a rule.

The test changes objects with :meth:`FakeKube.add`, :meth:`FakeKube.modify` and
:meth:`FakeKube.delete` while the client runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "fake-kube-token"


@dataclass(frozen=True)
class Kind:
    """A served resource: collection path, kind and apiVersion."""

    resource: str
    path: str
    kind: str
    api_version: str


KINDS = (
    Kind("pods", "/api/v1/pods", "Pod", "v1"),
    Kind("services", "/api/v1/services", "Service", "v1"),
    Kind("nodes", "/api/v1/nodes", "Node", "v1"),
    Kind("endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice",
         "discovery.k8s.io/v1"),
    Kind("replicasets", "/apis/apps/v1/replicasets", "ReplicaSet", "apps/v1"),
    Kind("deployments", "/apis/apps/v1/deployments", "Deployment", "apps/v1"),
    Kind("statefulsets", "/apis/apps/v1/statefulsets", "StatefulSet", "apps/v1"),
    Kind("daemonsets", "/apis/apps/v1/daemonsets", "DaemonSet", "apps/v1"),
    Kind("jobs", "/apis/batch/v1/jobs", "Job", "batch/v1"),
    Kind("cronjobs", "/apis/batch/v1/cronjobs", "CronJob", "batch/v1"),
)  # fmt: skip
BY_RESOURCE = {k.resource: k for k in KINDS}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``meta/v1 Status`` object."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def too_large(since: int, current: int) -> dict[str, Any]:
    """The Status of a WATCH from a resourceVersion the server has not reached
    (``storage.NewTooLargeResourceVersionError``): a ``504 Timeout`` whose cause says
    ``ResourceVersionTooLarge``."""
    body = status(
        504, "Timeout", f"Timeout: Too large resource version: {since}, current: {current}"
    )
    body["details"] = {"causes": [{"reason": "ResourceVersionTooLarge",
                                   "message": "Too large resource version"}],
                       "retryAfterSeconds": 1}  # fmt: skip
    return body


@dataclass(frozen=True)
class Backup:
    """What :meth:`FakeKube.snapshot` saved: the resourceVersion and every object."""

    version: int
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]]


def forbidden(kind: Kind, request: web.Request) -> dict[str, Any]:
    """The ``403 Forbidden`` Status the API server answers when RBAC lacks the rule."""
    group = kind.api_version.rpartition("/")[0]
    verb = "watch" if request.query.get("watch") in ("true", "1") else "list"
    qualified = f"{kind.resource}.{group}" if group else kind.resource
    message = (f'{qualified} is forbidden: User "system:serviceaccount:flowscope:enricher" '
               f'cannot {verb} resource "{kind.resource}" in API group "{group}" at the cluster scope')  # fmt: skip
    body = status(403, "Forbidden", message)
    body["details"] = {"group": group, "kind": kind.resource}
    return body


@dataclass
class Watcher:
    """One open WATCH stream: its queue of lines (None ends it, b"" breaks it)."""

    resource: str
    bookmarks: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    dead: bool = False  # its connection died in a partition: it never sends again


class FakeKube:
    """The fake API server: objects, history, open watches, and the test's controls."""

    def __init__(self) -> None:
        self.version = 100
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            k.resource: {} for k in KINDS
        }
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {
            k.resource: [] for k in KINDS
        }
        self.watchers: list[Watcher] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._snapshots: dict[str, list[dict[str, Any]]] = {}
        self._expired_tokens: set[str] = set()
        self.expire_after_first_page = False  # the next LIST's continue token expires
        self.end_watches_at_once = False  # every WATCH ends right after its backlog
        self.forbidden: set[str] = set()  # resources whose requests RBAC refuses (403)
        self.version_status = 200  # what GET /version answers (a 503: no API behind a proxy)
        self._speaking = asyncio.Event()  # cleared: silent
        self._speaking.set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        for kind in KINDS:
            app.router.add_get(kind.path, self._collection(kind))
        app.router.add_get("/version", self._version)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        """Take the API away: open streams are cut, new connections refused."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(b"")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
        }  # fmt: skip
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    # ------------------------------------------------------------ the test's controls

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._change(resource, "ADDED", obj)

    def modify(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self._change(resource, "MODIFIED", obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects[resource][(namespace, name)]
        return self._change(resource, "DELETED", obj)

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to watches that allow them."""
        for watcher in self.watchers:
            if watcher.bookmarks:
                kind = BY_RESOURCE[watcher.resource]
                obj = {"kind": kind.kind, "apiVersion": kind.api_version,
                       "metadata": {"resourceVersion": str(self.version)}}  # fmt: skip
                watcher.queue.put_nowait(_line("BOOKMARK", obj))

    def compact(self) -> None:
        """Forget history: watches resuming from an older resourceVersion get 410."""
        self.compacted = self.version + 1
        for events in self.history.values():
            events.clear()

    def snapshot(self) -> Backup:
        """Back etcd up: the resourceVersion and objects as they are now."""
        return Backup(self.version, copy.deepcopy(self.objects))

    def restore(self, backup: Backup) -> None:
        """Restore etcd from ``backup``: the objects and resourceVersion as they were, no
        history (a WATCH from an older version gets 410, from a newer one 504 too large),
        and open streams ended, as the API servers restart on it."""
        self.version = backup.version
        self.objects = copy.deepcopy(backup.objects)
        for events in self.history.values():
            events.clear()
        self.compacted = backup.version
        self.end_watches()

    def expire_continue_tokens(self) -> None:
        self._expired_tokens |= set(self._snapshots)

    def end_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)

    def break_watches(self) -> None:
        """Write half an event line, then drop each open stream's connection."""
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(b'{"type": "MODIFIED", "object": {"kind": "Po')
            watcher.queue.put_nowait(b"")

    def go_silent(self) -> None:
        """Open streams send nothing more and outlive their timeout; new requests are
        accepted and not answered — until :meth:`speak_again`."""
        self._speaking.clear()

    def speak_again(self) -> None:
        """Answer the requests held while silent, and stream again."""
        self._speaking.set()

    def partition(self) -> None:
        """Silent as :meth:`go_silent`; the streams open now never send again, even
        after :meth:`speak_again` (the client must give them up and WATCH anew)."""
        for watcher in self.watchers:
            watcher.dead = True
        self.go_silent()

    def forbid(self, resource: str) -> None:
        """Refuse every new request for ``resource`` (403), as when the client's RBAC role
        lacks it; open WATCH streams are ended (a WATCH asked again is refused)."""
        self.forbidden.add(resource)
        for watcher in list(self.watchers):
            if watcher.resource == resource:
                watcher.queue.put_nowait(None)

    def allow(self, resource: str) -> None:
        self.forbidden.discard(resource)

    def watch_count(self, resource: str) -> int:
        return sum(1 for w in self.watchers if w.resource == resource)

    def _change(self, resource: str, kind_of_change: str, obj: dict[str, Any]) -> dict[str, Any]:
        kind = BY_RESOURCE[resource]
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        obj["metadata"]["resourceVersion"] = str(self.version)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if kind_of_change == "DELETED":
            self.objects[resource].pop(key, None)
        else:
            self.objects[resource][key] = obj
        self.history[resource].append((self.version, kind_of_change, obj))
        for watcher in self.watchers:
            if watcher.resource == resource:
                watcher.queue.put_nowait(_line(kind_of_change, obj))
        return obj

    # ------------------------------------------------------------ HTTP

    def _collection(self, kind: Kind) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests.append((kind.resource, dict(request.query)))
            await self._speaking.wait()
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
            if kind.resource in self.forbidden:
                return web.json_response(forbidden(kind, request), status=403)
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(kind, request)
            return self._list(kind, request)

        return handle

    async def _version(self, request: web.Request) -> web.Response:
        self.requests.append(("version", dict(request.query)))
        await self._speaking.wait()
        if self.version_status != 200:
            body = status(self.version_status, "Failure", f"HTTP {self.version_status}")
            return web.json_response(body, status=self.version_status)
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0",
                                  "platform": "linux/amd64"})  # fmt: skip

    def _list(self, kind: Kind, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue", "")
        if token:
            snap_id, _, offset_text = base64.b64decode(token).decode().partition(":")
            if snap_id in self._expired_tokens or snap_id not in self._snapshots:
                body = status(410, "Expired", "The provided continue parameter is too old")
                return web.json_response(body, status=410)
            items, offset = self._snapshots[snap_id], int(offset_text)
            version = snap_id.split("/")[1]
        else:
            items = [copy.deepcopy(o) for o in self.objects[kind.resource].values()]
            version = str(self.version)
            snap_id = f"{kind.resource}/{version}/{len(self._snapshots)}"
            self._snapshots[snap_id] = items
            offset = 0
        if not token and self.expire_after_first_page:
            self.expire_after_first_page = False
            self._expired_tokens.add(snap_id)
        end = offset + limit if limit else len(items)
        meta: dict[str, Any] = {"resourceVersion": version}
        if end < len(items):
            meta["continue"] = base64.b64encode(f"{snap_id}:{end}".encode()).decode()
            meta["remainingItemCount"] = len(items) - end
        body = {"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                "items": items[offset:end]}  # fmt: skip
        return web.json_response(body)

    async def _watch(self, kind: Kind, request: web.Request) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since and since < self.compacted:
            expired = status(410, "Expired", f"too old resource version: {since}")
            await response.write(_line("ERROR", expired))
            await response.write_eof()
            return response
        if since > self.version:
            await response.write(_line("ERROR", too_large(since, self.version)))
            await response.write_eof()
            return response
        watcher = Watcher(kind.resource, bookmarks)
        for version, change, obj in self.history[kind.resource]:
            if version > since:
                watcher.queue.put_nowait(_line(change, obj))
        if self.end_watches_at_once:
            watcher.queue.put_nowait(None)
        self.watchers.append(watcher)
        try:
            await self._stream(watcher, response, request, timeout)
        finally:
            self.watchers.remove(watcher)
        return response

    async def _stream(
        self, watcher: Watcher, response: web.StreamResponse, request: web.Request, lifetime: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lifetime
        while True:
            try:
                line = await asyncio.wait_for(watcher.queue.get(), deadline - loop.time())
            except TimeoutError:
                line = None
            await self._speaking.wait()
            while watcher.dead and line != b"":  # only the test's stop() ends it
                line = await watcher.queue.get()
            if line is None:  # the server ends the watch (timeoutSeconds, or the test)
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
                return
            if line == b"":  # the connection breaks
                if request.transport is not None:
                    request.transport.abort()
                return
            try:
                await response.write(line)
            except ConnectionError:
                return


def _line(change: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": change, "object": obj}).encode() + b"\n"
