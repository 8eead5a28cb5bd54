"""The OTLP sink: logs over gRPC (``grpc.aio``) or HTTP/protobuf (aiohttp).

:class:`LogsEncoder` makes the request bytes once; a transport sends them and classifies
the answer per the OTLP specification:

- gRPC: UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS are
  retryable; RESOURCE_EXHAUSTED only when the server attached a ``google.rpc.RetryInfo``
  (in the ``grpc-status-details-bin`` trailer), whose delay is honoured.
- HTTP: any 2xx is success, as for the Collector's own otlphttp exporter (204 No
  Content, 202 Accepted from queueing gateways); its body, when there is one, is the
  ``ExportLogsServiceResponse`` (protobuf, or JSON when the receiver says so). 429, 502,
  503, 504 are retryable, honouring ``Retry-After``; connection errors too, and a 2xx
  whose body is not an ``ExportLogsServiceResponse`` (a proxy's page: whether the
  receiver got the records is unknown, and at least once means sending again); so is
  a gRPC OK whose message is not one.
- Anything else is permanent: the records are dead-lettered. That includes an HTTP
  redirect, which is not followed (aiohttp would, taking the headers' tokens and the
  records to wherever it points, plaintext ``http://`` included); the error names
  where it pointed, so the endpoint can be set to it.
- A record the encoder cannot carry (an integer outside int64, a value nested too
  deeply, see ``otlp_encoding.UnencodableError``) is left out of the request and
  dead-lettered alone.
- A ``partial_success`` with rejected log records is logged and counted, not retried;
  one with only an ``error_message`` (a warning from the receiver) is logged.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import grpc
from flowscope.core.logs import RateLimitedLog
from flowscope.exporter.metrics import ExporterMetrics
from flowscope.exporter.otlp_config import GRPC, OtlpTarget
from flowscope.exporter.otlp_encoding import LogsEncoder
from flowscope.exporter.retrying import Backoff, Stopper
from flowscope.exporter.settings import redacted
from flowscope.exporter.sink import ExportResult, Kind, Record
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

log = logging.getLogger("flowscope.exporter.otlp")

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})  # those aiohttp would follow
GZIP_LEVEL = 1  # flows compress ~10x even at level 1; higher levels cost CPU, gain little


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's answer: delivered (with a response), retry (maybe after a hint), or
    failed. ``unreadable``: the receiver answered success with a body that is no OTLP
    response (retried, and counted)."""

    response: ExportLogsServiceResponse | None = None
    retry: bool = False
    retry_after: float | None = None
    error: str = ""
    unreadable: bool = False


class Transport(Protocol):
    async def send(self, body: bytes) -> Outcome: ...

    async def close(self) -> None: ...


def retry_delay(trailers: Sequence[tuple[str, str | bytes]] | None) -> float | None:
    """The delay of a ``google.rpc.RetryInfo`` in ``grpc-status-details-bin``, if any.

    Details that do not parse (no ``Status``, a RetryInfo that is none) count as
    absent: the answer is handled by its code alone, as one without details."""
    for key, value in trailers or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        except DecodeError:
            return None
    return None


class GrpcTransport:
    """``LogsService/Export`` over a ``grpc.aio`` channel; the request is pre-encoded."""

    def __init__(self, target: OtlpTarget) -> None:
        self._target = target
        if target.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(target.ca_file),
                private_key=_read(target.client_key),
                certificate_chain=_read(target.client_cert),
            )
            self._channel = grpc.aio.secure_channel(target.grpc_target, creds)
        else:
            self._channel = grpc.aio.insecure_channel(target.grpc_target)
        # No request serializer: the encoder already produced the protobuf bytes. No
        # response deserializer either: grpc's swallows a decoding error and answers None,
        # which read as a refusal without a reason and dead-lettered the batch.
        self._export = self._channel.unary_unary(EXPORT_METHOD)

    async def send(self, body: bytes) -> Outcome:
        try:
            payload = await self._export(
                body,
                timeout=self._target.timeout,
                metadata=self._target.headers or None,
                compression=grpc.Compression.Gzip if self._target.gzip else None,
            )
        except grpc.aio.AioRpcError as e:
            return _grpc_outcome(e)
        try:
            return Outcome(response=ExportLogsServiceResponse.FromString(payload))
        except DecodeError:  # as an HTTP 2xx with such a body: unknown, so sent again
            start = payload[:80].decode("utf-8", "replace")
            error = f"gRPC OK with a body that is not an OTLP response: {start!r}"
            return Outcome(retry=True, error=error, unreadable=True)

    async def close(self) -> None:
        await self._channel.close()


def _grpc_outcome(e: grpc.aio.AioRpcError) -> Outcome:
    code = e.code()
    error = f"gRPC {code.name}: {e.details()}"
    if code in RETRYABLE_GRPC:
        return Outcome(retry=True, retry_after=retry_delay(e.trailing_metadata()), error=error)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(e.trailing_metadata())
        if delay is not None:  # the server says it will recover: retry after its delay
            return Outcome(retry=True, retry_after=delay, error=error)
    return Outcome(error=error)


class HttpTransport:
    """``POST /v1/logs`` with ``Content-Type: application/x-protobuf`` (optionally gzip)."""

    def __init__(self, target: OtlpTarget) -> None:
        self._target = target
        self._session: aiohttp.ClientSession | None = None
        self._headers = {**dict(target.headers), "Content-Type": "application/x-protobuf"}
        if target.gzip:
            self._headers["Content-Encoding"] = "gzip"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # The context was built (and its files checked) when the target was resolved.
            ssl_arg: ssl.SSLContext | bool = False
            if self._target.tls:
                ssl_arg = self._target.ssl or True
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_arg),
                timeout=aiohttp.ClientTimeout(total=self._target.timeout),
            )
        return self._session

    async def send(self, body: bytes) -> Outcome:
        data = gzip_compress(body) if self._target.gzip else body
        try:
            async with self._client().post(
                self._target.url, data=data, headers=self._headers, allow_redirects=False
            ) as r:
                payload = await r.read()
                if 200 <= r.status < 300:
                    return _decoded(r.status, payload, r.content_type)
                if r.status in REDIRECTS:
                    return Outcome(error=_redirected(r.status, r.headers.get("Location", "")))
                error = f"HTTP {r.status}: {_http_reason(payload)}"
                if r.status in RETRYABLE_HTTP:
                    hint = parse_retry_after(r.headers.get("Retry-After"))
                    return Outcome(retry=True, retry_after=hint, error=error)
                return Outcome(error=error)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Outcome(retry=True, error=f"HTTP {type(e).__name__}: {e}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _decoded(status: int, payload: bytes, content_type: str) -> Outcome:
    """A 2xx's body: the response (an empty one when there is no body, as with 204), or
    (neither protobuf nor the JSON it says it is) a retry counted as unreadable."""
    response = ExportLogsServiceResponse()
    try:
        if payload and content_type == "application/json":
            json_format.Parse(payload, response, ignore_unknown_fields=True)
        else:
            response.ParseFromString(payload)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError):
        start = payload[:80].decode("utf-8", "replace")
        error = f"HTTP {status} with a body that is not an OTLP response: {start!r}"
        return Outcome(retry=True, error=error, unreadable=True)
    return Outcome(response=response)


def _redirected(status: int, location: str) -> str:
    """A redirect's error (permanent: not among the retryable answers)."""
    where = redacted(location) if location else "(no Location)"
    return (
        f"HTTP {status} redirecting to {where}: redirects are not followed; "
        "set the OTLP endpoint to the final URL"
    )


def gzip_compress(body: bytes) -> bytes:
    """gzip framing (wbits 31) at a cheap level."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After``: delay seconds or an HTTP date; None when absent or unreadable.
    Seconds are ASCII digits (RFC 9110): ``isdigit`` alone also takes ``²``, which
    ``float`` refuses."""
    if not value:
        return None
    seconds = value.strip()
    if seconds.isascii() and seconds.isdigit():
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_reason(payload: bytes) -> str:
    """The message of a ``google.rpc.Status`` body, else the start of the body as text."""
    try:
        message = status_pb2.Status.FromString(payload).message
    except Exception:  # any decode failure: the body is not a Status
        message = ""
    return message or payload[:200].decode("utf-8", "replace")


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


class OtlpSink:
    """Delivers batches as OTLP log requests, retrying transient failures."""

    name = "otlp"

    def __init__(
        self,
        target: OtlpTarget,
        encoder: LogsEncoder,
        metrics: ExporterMetrics,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self._target = target
        self._encoder = encoder
        self._metrics = metrics
        self._backoff = backoff
        self._stopper = Stopper()
        self._transport: Transport = (
            GrpcTransport(target) if target.protocol == GRPC else HttpTransport(target)
        )
        self._bad = RateLimitedLog(log)

    async def start(self) -> None:
        log.info(
            "OTLP sink ready",
            extra={"url": redacted(self._target.url), "protocol": self._target.protocol},
        )

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        unencodable: dict[int, str] = {}
        body = self._encoder.encode(kind, records, time.time_ns(), unencodable)
        if unencodable:
            self._bad.warning(
                "otlp-unencodable",
                "records OTLP cannot carry",
                example=next(iter(unencodable.values())),
            )
        sent = [i for i in range(len(records)) if i not in unencodable]
        if not sent:
            return ExportResult(rejected=unencodable)
        backoff = Backoff(*self._backoff)
        while True:
            outcome = await self._transport.send(body)
            if outcome.response is not None:
                dropped = self._note_partial(outcome.response, len(sent))
                return ExportResult(rejected=unencodable, unconfirmed=dropped)
            if not outcome.retry:
                self._bad.warning("otlp-rejected", "OTLP export refused", error=outcome.error)
                return ExportResult(rejected={**dict.fromkeys(sent, outcome.error), **unencodable})
            if outcome.unreadable:
                self._metrics.bad_responses.labels(self.name).inc()
            delay = backoff.next_delay(outcome.retry_after)
            self._bad.warning(
                "otlp-retry", "OTLP export failed; retrying", error=outcome.error, delay=delay
            )
            if self._stopper.stopped or not await self._stopper.sleep(delay):
                return ExportResult(rejected=unencodable, deferred=set(sent))
            self._metrics.retried.labels(self.name).inc(len(sent))

    def _note_partial(self, response: ExportLogsServiceResponse, count: int) -> int:
        """Count and log rejected records; log a receiver's warning (a message, 0 rejected).
        Returns how many of the ``count`` sent the receiver dropped (which, it does not say)."""
        rejected = response.partial_success.rejected_log_records
        message = response.partial_success.error_message
        if rejected > 0:
            self._metrics.partial_rejected.labels(self.name).inc(rejected)
            self._bad.warning(
                "otlp-partial",
                "OTLP receiver rejected part of a batch",
                rejected=rejected,
                of=count,
                error=message,
            )
        elif message:
            self._bad.warning("otlp-warning", "OTLP receiver warned", of=count, error=message)
        return min(max(rejected, 0), count)

    async def force_flush(self) -> None:
        return None  # nothing buffered here: export() sends before it returns

    async def shutdown(self) -> None:
        self._stopper.stop()

    async def close(self) -> None:
        await self._transport.close()
