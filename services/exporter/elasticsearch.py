"""The Elasticsearch sink: ``_bulk`` ``create`` actions into data streams.

Per item of a bulk response: 201 stored; 409 (``version_conflict_engine_exception``) means
a redelivered record was already stored under its deterministic ``_id`` — success; 429
and 5xx are retried (only those items) with backoff, and so are refusals about the
cluster's setup rather than the document: 401/403 (``security_exception``: a missing
index privilege is reported per item) and 404 (``index_not_found_exception``: a data
stream that cannot be created yet). Any other 4xx (``document_parsing_exception``, …) is
the document's fault: the record is dead-lettered with Elasticsearch's reason. A whole
request that fails (peer down, 429/5xx, 401/403 while credentials are being fixed) is
retried, never dead-lettered: those records are fine, the backend is not. A request too
large for it (413, over ``http.max_content_length`` or a proxy's limit) is sent again in
halves, as Beats does; a record too large on its own is dead-lettered.

Like the official client, every response must carry ``X-Elastic-Product:
Elasticsearch``; a peer without it is treated as unavailable. So is a redirect, which
is not followed: the records (and, to the same origin, the credentials) would go to
wherever it points, plaintext ``http://`` included.

TLS (CA, client certificate and key for mutual TLS) is loaded when the sink is built,
before any connection: a file that is not PEM, or one set for an ``http://`` URL (it
would be ignored), stops start-up (:func:`tls_context`). So do credentials that would
not all be sent (:class:`Credentials`); a credential file is read again when it changes,
so a fixed or rotated Secret is used without a restart. Credentials with an ``http://``
URL are a start-up warning, not an error: they go out unencrypted with every request,
which only a loopback or same-pod Elasticsearch makes harmless (:func:`warn_plaintext`).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from flowscope.core.config import parse_secret
from flowscope.core.errors import ConfigError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.tls import TlsFile, client_context, setting_name
from flowscope.exporter import ecs
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.retrying import Backoff, Stopper
from flowscope.exporter.settings import ElasticsearchSettings, redacted
from flowscope.exporter.sink import ExportResult, Kind, Record

log = logging.getLogger("flowscope.exporter.elasticsearch")

PRODUCT_HEADER = "X-Elastic-Product"
NDJSON = "application/x-ndjson"
# Only what classify() reads: the full answer repeats index, id, version, shards, …
# for every item (~230 bytes each) and parsing it cost more than writing the request.
# Beats' Elasticsearch output asks for the same filter.
BULK_PATH = "/_bulk?filter_path=errors,items.*.status,items.*.error"
# How such a filtered answer starts when every item was stored. That answer is only
# counted, not decoded: 1,000 small objects per request cost ~0.15 µs per record to
# build, with nothing to read in them. Any other answer is decoded and walked.
ALL_STORED = b'{"errors":false,"items":['
ITEM_STATUS = b'"status":'  # once per item of such an answer
# Per-item refusals about the cluster's setup (privileges, a missing data stream), not
# the document: the record is fine and is stored once the setup is fixed, as Logstash's
# output retries them too. Matched by status and, should a proxy or version differ in
# status, by error type.
SETUP_STATUSES = frozenset({401, 403, 404})
SETUP_ERRORS = frozenset({"security_exception", "index_not_found_exception"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # those aiohttp would follow


class BackendError(Exception):
    """The whole request failed in a way worth retrying (unreachable, 5xx, not ES, ...)."""


class TooLarge(BackendError):
    """413: the body is over the request size Elasticsearch (``http.max_content_length``,
    100 MB by default) or a proxy in front of it accepts. Sent again as it was, it is
    refused again for ever: a bulk is split, a single document refused."""


@dataclass(slots=True, frozen=True)
class BulkAnswer:
    """A ``_bulk`` response: its item count, and the response itself unless every item
    was stored (then it is not decoded)."""

    items: int
    response: dict[str, Any] | None


@dataclass(slots=True)
class BulkOutcome:
    """Per-item classification of one ``_bulk`` response (indices into the request)."""

    stored: int = 0
    already: int = 0
    retry: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    setup: str = ""  # the reason of a setup refusal among ``retry`` (one, for the log)
    unreadable: int = 0  # items among ``retry`` that are no ``{action: {status, …}}``


@dataclass(slots=True)
class BulkLines:
    """A batch written once as ``_bulk`` NDJSON: a ``create`` action line then the
    document, per record, in one buffer; ``spans[i]`` is record i's slice of ``body``.

    One buffer rather than a bytes object per record: each record's encoding is freed
    as soon as it is copied in, which on glibc is several times cheaper than keeping a
    thousand fresh ~1 KB results alive until a final join (docs/performance.md).
    ``body`` is a view of a ``Buffers`` buffer: ``release()`` it when the batch is done.
    """

    body: memoryview
    spans: dict[int, tuple[int, int]]

    def select(self, indices: Sequence[int]) -> bytes | memoryview:
        """The body holding only the records ``indices`` (all of them: the buffer itself)."""
        if len(indices) == len(self.spans):
            return self.body
        return b"".join([self.body[slice(*self.spans[i])] for i in indices])

    def release(self) -> None:
        self.body.release()


class Buffers:
    """Write buffers for ``_bulk`` bodies, reused from batch to batch.

    A fresh ~1.6 MB buffer per batch cost ~0.3 µs of system time per record (the kernel
    mapping and zeroing its pages, as glibc hands such blocks back at once) plus copies
    as it grew; a reused one is already mapped and large enough. A buffer is overwritten
    from the start, so only the batch's own bytes are read (``BulkLines.body``). There
    is one per export under way, each as large as the largest body it held.
    """

    def __init__(self) -> None:
        self._free: list[io.BytesIO] = []

    def take(self) -> io.BytesIO:
        """A buffer to overwrite from the start."""
        while self._free:
            buffer = self._free.pop()
            buffer.seek(0)
            try:
                buffer.write(b"")  # refused while a view of its last body is still alive
            except BufferError:
                continue  # someone still reads it: let it go, take another
            return buffer
        return io.BytesIO()

    def give(self, buffer: io.BytesIO) -> None:
        self._free.append(buffer)


class BulkBody(aiohttp.BytesPayload):
    """A ``_bulk`` body handed to aiohttp without being copied.

    A body is ~1.6 MB per 1,000 records. Given the ``bytearray``, aiohttp copied it
    twice before the socket saw it: once slicing it to the Content-Length (a
    ``bytearray`` slice is a copy, a ``memoryview`` slice is not), and once joining it
    with the buffered request headers, which go out with the first write of the body.
    So the body is a ``memoryview`` written in two parts: a small first one that the
    headers are joined with, then the rest, which goes to the transport as it is.
    That saved ~0.3 µs of the exporter's CPU per record (docs/performance.md).
    """

    HEAD = 4096  # bytes of body written with the request headers

    def __init__(self, body: bytes | memoryview) -> None:
        self._view = memoryview(body)
        super().__init__(self._view, content_type=NDJSON)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = self._view
        if content_length is not None:
            view = view[:content_length]
        await writer.write(view[: self.HEAD])
        if len(view) > self.HEAD:
            await writer.write(view[self.HEAD :])


def action_prefix(index: str) -> bytes:
    """The ``create`` action line up to the ``_id`` value."""
    return b'{"create":{"_index":' + orjson.dumps(index) + b',"_id":"'


def classify(response: dict[str, Any]) -> BulkOutcome:
    """Sort a ``_bulk`` response's items by what to do next."""
    outcome = BulkOutcome()
    for i, item in enumerate(response["items"]):
        status, result = _item_result(item)
        if status in (200, 201):
            outcome.stored += 1
        elif status == 409:
            outcome.already += 1
        elif status == 0:  # what became of the record is unknown: send it again
            outcome.retry.append(i)
            outcome.unreadable += 1
        elif status == 429 or status >= 500:
            outcome.retry.append(i)
        else:
            error = result.get("error")
            if not isinstance(error, dict):
                error = {"reason": error or ""}
            reason = f"{status} {error.get('type', '')}: {error.get('reason', '')}"
            if status in SETUP_STATUSES or error.get("type") in SETUP_ERRORS:
                outcome.retry.append(i)
                outcome.setup = outcome.setup or reason
            else:
                outcome.rejected[i] = reason
    return outcome


def _item_result(item: Any) -> tuple[int, dict[str, Any]]:
    """An item's status and result; status 0 for an item that is not
    ``{action: {"status": <int>, …}}``, which a proxy or another product may answer (it
    raised, and the batch was retried as a sink's bug until the answer changed)."""
    result = next(iter(item.values()), None) if isinstance(item, dict) else None
    if not isinstance(result, dict) or type(result.get("status")) is not int:
        return 0, {}
    return result["status"], result


def tls_context(settings: ElasticsearchSettings) -> ssl.SSLContext | None:
    """The client context for an ``https://`` URL (None: plain HTTP); a file that is not
    PEM, a certificate without its key, or a file set for an ``http://`` URL (loaded,
    then never used: the connection would be plaintext) is a ConfigError."""
    files = [
        TlsFile(getattr(settings, name), setting_name("elasticsearch", name))
        for name in ("ca_file", "client_cert", "client_key")
    ]
    if not settings.url.startswith("https://") and not any(f.path for f in files):
        return None
    context = client_context(*files)
    if not settings.url.startswith("https://"):
        first = next(f for f in files if f.path)
        raise ConfigError(
            first.setting,
            f"a TLS file is set but {setting_name('elasticsearch', 'url')} is plaintext "
            "http://: use https:// or unset the TLS files",
        )
    return context


def warn_plaintext(settings: ElasticsearchSettings) -> None:
    """One warning when credentials are set and the URL is plaintext ``http://``, as
    Elastic's clients and Beats give: naming the settings, never a secret."""
    if settings.url.startswith("https://"):
        return
    given = [
        setting_name("elasticsearch", name, flag=name not in ("password", "api_key"))
        for name in ("api_key_file", "api_key", "username", "password_file", "password")
        if getattr(settings, name)
    ]
    if given:
        log.warning(
            "Elasticsearch credentials go unencrypted: the URL is plaintext http://; use "
            "https:// unless Elasticsearch is on this host or in this pod",
            extra={
                "setting": setting_name("elasticsearch", "url"),
                "credentials": ", ".join(given),
                "url": redacted(settings.url),
            },
        )


@dataclass(frozen=True, slots=True)
class SecretFile:
    """A configured credential file (empty path: not set) and the setting naming it."""

    path: str
    setting: str


class Credentials:
    """The ``Authorization`` header: an API key or basic authentication, from settings
    or from files (mounted Secrets).

    Checked when built: a password without a user, a user without a password, an empty
    file, or an API key set along with basic authentication would have been sent in
    part or not at all, silently: each is a ConfigError naming the setting. A file is
    read again when it changes (Kubernetes replaces a mounted Secret's file when the
    Secret is updated) and after Elasticsearch refuses the credentials (401/403), so a
    fixed or rotated Secret is used without a restart; a file that cannot be read, or
    is empty for a moment while it is written, keeps the last value.
    """

    def __init__(self, settings: ElasticsearchSettings) -> None:
        _check_credentials(settings)
        self._username = settings.username
        name = "api_key_file" if settings.api_key_file else "password_file"
        self._file = SecretFile(getattr(settings, name), setting_name("elasticsearch", name))
        self._seen: tuple[int, int, int, int] | None = None  # the file's, when last read
        self._log = RateLimitedLog(log)
        secret = settings.api_key or settings.password
        if self._file.path:
            self._seen, secret = _read_secret(self._file)
        self._header = self._authorization(secret)

    def header(self) -> str:
        """The current header value ("" without credentials)."""
        if self._file.path:
            self._reread()
        return self._header

    def refused(self) -> None:
        """Elasticsearch refused them: read the file again before the next request,
        even if it looks unchanged (a rewrite within the file clock's resolution)."""
        self._seen = None

    def _reread(self) -> None:
        try:
            if _signature(self._file.path) == self._seen:
                return
            seen, secret = _read_secret(self._file)
        except (OSError, ConfigError) as e:
            problem = getattr(e, "problem", None) or getattr(e, "strerror", None) or str(e)
            self._log.warning(
                "es-credentials-file",
                "Elasticsearch credentials file unusable; keeping the last value",
                setting=self._file.setting,
                error=problem,
            )
            return
        header = self._authorization(secret)
        if header != self._header:
            log.info(
                "Elasticsearch credentials file changed", extra={"setting": self._file.setting}
            )
        self._seen, self._header = seen, header

    def _authorization(self, secret: str) -> str:
        if not secret:
            return ""
        if not self._username:
            return f"ApiKey {secret}"
        token = base64.b64encode(f"{self._username}:{secret}".encode()).decode()
        return f"Basic {token}"


def _check_credentials(settings: ElasticsearchSettings) -> None:
    """Refuse credentials that would be sent in part or not at all."""

    def name(setting: str) -> str:  # the secrets themselves have no flag
        return setting_name("elasticsearch", setting, flag=setting not in ("password", "api_key"))

    password = "password_file" if settings.password_file else "password"
    api_key = "api_key_file" if settings.api_key_file else "api_key"
    if getattr(settings, password) and not settings.username:
        raise ConfigError(name(password), f"basic authentication needs {name('username')} too")
    if settings.username and not getattr(settings, password):
        raise ConfigError(
            name("username"),
            f"basic authentication needs {name('password')} or {name('password_file')} too",
        )
    if settings.username and getattr(settings, api_key):
        raise ConfigError(
            name(api_key),
            f"set with {name('username')}: use either an API key or basic authentication",
        )


def _signature(path: str) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten (``stat`` follows the symlinks
    of a mounted Secret to the current file)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _read_secret(file: SecretFile) -> tuple[tuple[int, int, int, int], str]:
    """The file's signature and its content as :func:`parse_secret` takes it (without
    a final newline); empty, unreadable, or with a control character inside is a
    ConfigError naming the setting."""
    try:
        seen = _signature(file.path)
        secret = parse_secret(Path(file.path).read_text())
    except OSError as e:
        raise ConfigError(file.setting, f"{file.path} cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:  # its message quotes a byte of the secret: not shown
        raise ConfigError(file.setting, f"{file.path} is not UTF-8 text") from e
    except ValueError as e:
        raise ConfigError(file.setting, f"{file.path}: {e}") from e
    if not secret:
        raise ConfigError(file.setting, f"{file.path} is empty")
    return seen, secret


class BulkClient:
    """The few Elasticsearch endpoints the sink uses, over one aiohttp session."""

    def __init__(self, settings: ElasticsearchSettings) -> None:
        self._settings = settings
        self._tls = tls_context(settings)  # now: bad TLS files stop start-up
        self._credentials = Credentials(settings)  # and credentials that would be dropped
        warn_plaintext(settings)
        self._base = settings.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def credentials_refused(self) -> None:
        """Items were refused for the setup (privileges among it): see the credentials
        file again before the next request (a new key may carry the privileges)."""
        self._credentials.refused()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else False),
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
                headers={"Accept": "application/json"},
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | BulkBody | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """Send one request; (status, decoded JSON). Unreachable or not ES → BackendError."""
        status, payload = await self._send(method, path, body, content_type)
        return status, _decode(payload)

    async def bulk(self, body: bytes | memoryview) -> BulkAnswer:
        status, payload = await self._send("POST", BULK_PATH, BulkBody(body), NDJSON)
        if status == 200 and payload.startswith(ALL_STORED):
            return BulkAnswer(payload.count(ITEM_STATUS), None)
        response = _decode(payload)
        if status != 200 or not isinstance(response, dict):
            raise BackendError(f"_bulk answered {status}: {_reason(response)}")
        if not isinstance(response.get("items"), list):
            raise BackendError(f"_bulk answered {status} without items: {_reason(response)}")
        return BulkAnswer(len(response["items"]), response)

    async def _send(
        self, method: str, path: str, body: bytes | BulkBody | None, content_type: str
    ) -> tuple[int, bytes]:
        """One request; (status, raw response body)."""
        headers = {"Content-Type": content_type} if body is not None else {}
        authorization = self._credentials.header()
        if authorization:
            headers["Authorization"] = authorization
        try:
            async with self._client().request(
                method, self._base + path, data=body, headers=headers, allow_redirects=False
            ) as r:
                payload = await r.read()
                if r.status in REDIRECTS:
                    raise BackendError(_redirected(self._base, r.status, r.headers))
                if r.status == 413:  # whoever answers it (ES, a proxy): the body is too large
                    raise TooLarge(payload[:200].decode("utf-8", "replace") or "413")
                if r.headers.get(PRODUCT_HEADER) != "Elasticsearch":
                    raise BackendError(f"{self._base} is not Elasticsearch (no {PRODUCT_HEADER})")
                if r.status in (401, 403):
                    self._credentials.refused()
                return r.status, payload
        except (aiohttp.ClientError, TimeoutError) as e:
            raise BackendError(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _redirected(base: str, status: int, headers: Mapping[str, str]) -> str:
    """The error of a redirect: where it points, and what to change."""
    location = redacted(headers.get("Location", "(no Location)"))
    return (
        f"{base} answered {status} redirecting to {location}: redirects are not followed "
        f"(the records would go there); set {setting_name('elasticsearch', 'url')} to "
        "the final URL"
    )


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError as e:
        raise BackendError(f"unreadable response: {e}") from e


def _reason(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("reason", payload["error"]))
    return str(payload)[:200]


class ElasticsearchSink:
    """Delivers batches with ``_bulk``; installs the index template at start."""

    name = "elasticsearch"

    def __init__(
        self,
        settings: ElasticsearchSettings,
        mapper: ecs.EcsMapper,
        metrics: ExporterMetrics,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self._settings = settings
        self._mapper = mapper
        self._metrics = metrics
        self._backoff = backoff
        self._client = BulkClient(settings)
        self._stopper = Stopper()
        self._buffers = Buffers()
        self._log = RateLimitedLog(log)
        self._streams = {Kind.FLOW: settings.flows_data_stream, Kind.DNS: settings.dns_data_stream}

    async def start(self) -> None:
        """Check the peer is Elasticsearch; install the template if allowed (raises to retry)."""
        status, info = await self._client.request("GET", "/")
        if status != 200:
            raise BackendError(f"GET / answered {status}: {_reason(info)}")
        version = (info or {}).get("version", {}).get("number", "?")
        if self._settings.install_template:
            body = orjson.dumps(ecs.index_template(tuple(self._streams.values())))
            status, answer = await self._client.request(
                "PUT", f"/_index_template/{ecs.TEMPLATE_NAME}", body
            )
            if status != 200:
                raise BackendError(f"index template refused ({status}): {_reason(answer)}")
        log.info("Elasticsearch sink ready", extra={"version": version})

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        result = ExportResult()
        buffer = self._buffers.take()
        lines = self._write(kind, records, result, buffer)
        try:
            await self._deliver(lines, result)
        finally:
            lines.release()
            self._buffers.give(buffer)
        return result

    async def _deliver(self, lines: BulkLines, result: ExportResult) -> None:
        """Send the batch until every record is stored, refused, or deferred (stopping)."""
        pending = list(lines.spans)
        backoff = Backoff(*self._backoff)
        while pending:
            pending = await self._attempt(lines, pending, result)
            if not pending:
                break
            if self._stopper.stopped or not await self._stopper.sleep(backoff.next_delay()):
                result.deferred.update(pending)
                break
            self._metrics.retried.labels(self.name).inc(len(pending))

    def _write(
        self, kind: Kind, records: Sequence[Record], result: ExportResult, buffer: io.BytesIO
    ) -> BulkLines:
        """Every record as its two ``_bulk`` lines; one the mapping cannot handle is
        rejected alone (it goes to the DLQ) and the rest are written."""
        spans: dict[int, tuple[int, int]] = {}
        write = buffer.write
        prefix = action_prefix(self._streams[kind])
        entry = self._mapper.entry(kind)
        end = 0
        for i, record in enumerate(records):
            try:
                doc_id, document_line = entry(record)
            except Exception as e:  # the record is at fault: it goes to the DLQ
                result.rejected[i] = f"cannot map to ECS: {type(e).__name__}: {e}"
                continue
            start = end
            end += write(prefix) + write(doc_id) + write(b'"}}\n') + write(document_line)
            spans[i] = (start, end)
        return BulkLines(buffer.getbuffer()[:end], spans)

    async def _attempt(
        self, lines: BulkLines, pending: list[int], result: ExportResult
    ) -> list[int]:
        """One ``_bulk`` of the pending records; returns those to send again."""
        try:
            answer = await self._client.bulk(lines.select(pending))
        except TooLarge as e:
            return await self._halves(lines, pending, result, e)
        except BackendError as e:
            self._log.warning("es-unavailable", "Elasticsearch unavailable; retrying", error=str(e))
            return pending
        if answer.items != len(pending):
            self._log.warning("es-short", "_bulk answered a different item count; retrying all")
            return pending
        if answer.response is None or answer.response.get("errors") is False:
            return []  # every item stored: no need to walk them
        outcome = classify(answer.response)
        if outcome.unreadable:
            self._log.warning(
                "es-unreadable", "_bulk answered items without a status; retrying them"
            )
        self._metrics.already_stored.labels(self.name).inc(outcome.already)
        result.unconfirmed += outcome.already
        for i, reason in outcome.rejected.items():
            result.rejected[pending[i]] = reason
        if outcome.rejected:
            self._log.warning(
                "es-rejected",
                "Elasticsearch rejected documents",
                example=next(iter(outcome.rejected.values())),
            )
        if outcome.setup:  # retried until fixed: someone has to fix it
            self._client.credentials_refused()
            self._log.warning(
                "es-setup",
                "Elasticsearch refused documents for its setup (privileges, missing data "
                "stream); retrying",
                example=outcome.setup,
            )
        return [pending[i] for i in outcome.retry]

    async def _halves(
        self, lines: BulkLines, pending: list[int], result: ExportResult, error: TooLarge
    ) -> list[int]:
        """A ``_bulk`` answered 413: each half is sent on its own (splitting again as
        needed); a record that is too large alone can never be stored, so it is refused
        (dead-lettered). Returns the records to send again."""
        if len(pending) == 1:
            result.rejected[pending[0]] = (
                "413 document too large: alone it is over the request size Elasticsearch "
                f"accepts (http.max_content_length): {error}"
            )
            self._log.warning("es-too-large", "document too large for _bulk", error=str(error))
            return []
        middle = len(pending) // 2
        first = await self._attempt(lines, pending[:middle], result)
        return first + await self._attempt(lines, pending[middle:], result)

    async def force_flush(self) -> None:
        return None

    async def shutdown(self) -> None:
        self._stopper.stop()

    async def close(self) -> None:
        await self._client.close()
