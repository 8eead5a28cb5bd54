"""Real OTLP logs receivers for tests: gRPC (``grpc.aio`` + the opentelemetry-proto
``LogsService`` servicer) and HTTP/protobuf (aiohttp, ``POST /v1/logs``, gzip).

Both listen on 127.0.0.1 port 0, decode every request with the official generated
classes, record what they accepted, and answer from a script: each attempt consumes
the next scripted :class:`Answer` (then plain success). Answers cover the OTLP
specification's cases: UNAVAILABLE, RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo``
in the ``grpc-status-details-bin`` trailer, INVALID_ARGUMENT (permanent), HTTP 503 with
``Retry-After``, HTTP 400, and a ``partial_success``.
"""

from __future__ import annotations

import gzip
import ssl
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A test CA and a certificate/key it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        """A server's context; ``require_client_cert``: mutual TLS, clients signed by the CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def make_tls(directory: Path) -> tuple[TlsFiles, TlsFiles]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=flowscope test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")  # fmt: skip
    ca = directory / "ca.pem"
    return (
        TlsFiles(ca, directory / "server.pem", directory / "server.key"),
        TlsFiles(ca, directory / "client.pem", directory / "client.key"),
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver does with one attempt.

    ``kind``: ``ok``, ``partial`` (``rejected`` records), ``unavailable``,
    ``exhausted`` (RESOURCE_EXHAUSTED; with ``retry_delay`` it carries RetryInfo),
    ``invalid`` (permanent error), ``http503`` (``retry_after`` seconds), ``http400``,
    ``http`` (any ``status``), ``garbage`` (HTTP 200 whose body is an HTML page, as a
    misconfigured proxy answers: the request is not recorded as accepted), ``empty``
    (HTTP: the records accepted, answered with ``status`` — 204, 202 — and no body),
    ``json`` (HTTP: the records accepted, the response, a ``partial`` one when
    ``rejected``, as JSON with ``status``).
    ``message``: the ``partial_success.error_message`` of a ``partial`` answer.
    """

    kind: str = "ok"
    rejected: int = 0
    message: str = "test receiver rejected some"
    status: int = 0  # kind "http": answer this HTTP status with a google.rpc.Status body
    retry_delay: float | None = None
    retry_after: int | None = None


@dataclass
class Received:
    """What a receiver saw: accepted requests, every attempt's time, metadata."""

    requests: list[ExportLogsServiceRequest] = field(default_factory=list)
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, answer)
    metadata: list[dict[str, str]] = field(default_factory=list)
    script: deque[Answer] = field(default_factory=deque)

    def next_answer(self) -> Answer:
        answer = self.script.popleft() if self.script else Answer()
        self.attempts.append((time.monotonic(), answer.kind))
        return answer

    @property
    def log_records(self) -> list[LogRecord]:
        return [
            lr
            for req in self.requests
            for rl in req.resource_logs
            for sl in rl.scope_logs
            for lr in sl.log_records
        ]


def status_details(code: int, message: str, retry_delay: float | None) -> bytes:
    """A serialized ``google.rpc.Status``, with a RetryInfo detail when a delay is given."""
    status = status_pb2.Status(code=code, message=message)
    if retry_delay is not None:
        info = error_details_pb2.RetryInfo(
            retry_delay=Duration(seconds=int(retry_delay), nanos=int(retry_delay % 1 * 1e9))
        )
        status.details.add().Pack(info)
    return status.SerializeToString()


def partial(answer: Answer) -> ExportLogsServiceResponse:
    return ExportLogsServiceResponse(
        partial_success=ExportLogsPartialSuccess(
            rejected_log_records=answer.rejected, error_message=answer.message
        )
    )


class _Servicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received

    async def Export(  # the generated servicer's method name
        self, request: ExportLogsServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportLogsServiceResponse:
        answer = self.received.next_answer()
        self.received.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        if answer.kind == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "test: unavailable")
        if answer.kind == "exhausted":
            details = status_details(
                code_pb2.RESOURCE_EXHAUSTED, "test: slow down", answer.retry_delay
            )
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "test: slow down",
                trailing_metadata=(("grpc-status-details-bin", details),),
            )
        if answer.kind == "invalid":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "test: bad request")
        self.received.requests.append(request)
        return partial(answer) if answer.kind == "partial" else ExportLogsServiceResponse()


class GrpcReceiver:
    """An OTLP/gRPC logs receiver on 127.0.0.1 (or ``host``; port 0 unless given)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received = Received()
        self.host = host
        self.port = 0
        self.tls = False
        self._server: grpc.aio.Server | None = None

    @property
    def _host(self) -> str:
        """The host as a URL or gRPC address writes it (an IPv6 literal in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    async def start(self, port: int = 0, tls: TlsFiles | None = None) -> GrpcReceiver:
        """Listen; with ``tls``, TLS with that certificate and client certificates required."""
        self._server = grpc.aio.server()
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
            _Servicer(self.received), self._server
        )
        address = f"{self._host}:{port}"
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.key.read_bytes(), tls.cert.read_bytes())],
                root_certificates=tls.ca.read_bytes(),
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port(address, creds)
        self.tls = tls is not None
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self._host}:{self.port}"


class HttpReceiver:
    """An OTLP/HTTP protobuf logs receiver (``POST /v1/logs``) on 127.0.0.1."""

    def __init__(self) -> None:
        self.received = Received()
        self.port = 0
        self.tls = False
        self.encodings: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0, tls: TlsFiles | None = None) -> HttpReceiver:
        """Listen; with ``tls``, HTTPS with that certificate."""
        app = web.Application(client_max_size=64 << 20)  # a collector's limit, not 1 MB
        app.router.add_post("/v1/logs", self._logs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.tls = tls is not None
        site = web.TCPSite(
            self._runner, "127.0.0.1", port, ssl_context=tls.server_context() if tls else None
        )
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _logs(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="want application/x-protobuf")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        self.encodings.append(encoding)
        if encoding == "gzip" and body[:2] == b"\x1f\x8b":
            # aiohttp's server already inflates gzip request bodies; older releases did not.
            body = gzip.decompress(body)
        answer = self.received.next_answer()
        self.received.metadata.append({k.lower(): v for k, v in request.headers.items()})
        if answer.kind == "http503":
            headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
            return _status_response(503, code_pb2.UNAVAILABLE, "test: unavailable", headers)
        if answer.kind == "http":
            return _status_response(answer.status, code_pb2.UNAVAILABLE, "test: scripted", {})
        if answer.kind == "http400":
            return _status_response(400, code_pb2.INVALID_ARGUMENT, "test: bad request", {})
        if answer.kind == "garbage":
            return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")
        self.received.requests.append(ExportLogsServiceRequest.FromString(body))
        if answer.kind == "empty":
            return web.Response(status=answer.status)
        if answer.kind == "json":
            response = partial(answer) if answer.rejected else ExportLogsServiceResponse()
            return web.Response(
                status=answer.status,
                text=json_format.MessageToJson(response),
                content_type="application/json",
            )
        response = partial(answer) if answer.kind == "partial" else ExportLogsServiceResponse()
        return web.Response(
            body=response.SerializeToString(), content_type="application/x-protobuf"
        )


def _status_response(http: int, code: int, message: str, headers: dict[str, str]) -> web.Response:
    body = status_pb2.Status(code=code, message=message).SerializeToString()
    return web.Response(
        status=http, body=body, headers=headers, content_type="application/x-protobuf"
    )
