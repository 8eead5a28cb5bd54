"""Where and how to send OTLP: flowscope settings over the standard OTEL variables.

Precedence for every option: a flowscope setting (flag, ``FLOWSCOPE_OTLP_*``, YAML),
then ``OTEL_EXPORTER_OTLP_LOGS_*``, then ``OTEL_EXPORTER_OTLP_*``, then the OTLP
exporter specification's default. A bad value raises :class:`ConfigError` naming the
variable it came from (one line, exit 2). The TLS files are loaded here too, into the
target's context, so a file that is not PEM is such an error rather than a failure of
every request; so is a TLS file given for a plaintext endpoint, which would otherwise
be ignored while records (and the headers' tokens) go out unencrypted. Headers with a
plaintext endpoint are a warning, not an error (a collector on this host or in this pod
is a legitimate set-up): it names the headers, never their values.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from flowscope.core.config import positive, readable_file
from flowscope.core.errors import ConfigError
from flowscope.core.tls import TlsFile, client_context, setting_name
from flowscope.exporter.settings import OtlpSettings, parse_endpoint, parse_headers, redacted

log = logging.getLogger("flowscope.exporter.otlp")

GRPC = "grpc"
HTTP = "http/protobuf"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
LOGS_PATH = "/v1/logs"
# Headers the transports write themselves: the request's framing and encoding, HTTP's
# hop-by-hop controls, and gRPC's reserved ``grpc-*`` names. Given as extra headers they
# broke every export: a ``content-length`` cut the body (the receiver took the first
# bytes as an empty request: records lost) or raised, ``transfer-encoding`` was a 400
# (every record dead-lettered), a ``grpc-status`` raised in grpc.
TRANSPORT_HEADERS = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """The resolved OTLP destination and transport options."""

    protocol: str
    url: str  # HTTP: full URL of the logs endpoint; gRPC: scheme://host:port
    tls: bool
    headers: tuple[tuple[str, str], ...]
    gzip: bool
    ca_file: str
    client_cert: str
    client_key: str
    timeout: float
    # The files above loaded (when TLS is used); the HTTP transport's.
    ssl: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        """Without secrets: header names only, the URL without ``user:password@``."""
        names = ", ".join(key for key, _ in self.headers)
        return (
            f"OtlpTarget(protocol={self.protocol!r}, url={redacted(self.url)!r}, "
            f"tls={self.tls}, headers=[{names}], gzip={self.gzip}, ca_file={self.ca_file!r}, "
            f"client_cert={self.client_cert!r}, client_key={self.client_key!r}, "
            f"timeout={self.timeout})"
        )

    @property
    def grpc_target(self) -> str:
        """``host:port`` for a gRPC channel (an IPv6 literal keeps its brackets)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{parts.port or (443 if self.tls else 4317)}"


def _pick(
    setting_value: Any, env: Mapping[str, str], name: str, parse: Callable[[str], T]
) -> tuple[T | Any, str]:
    """The first value set among setting, LOGS variable and generic variable."""
    if setting_value not in (None, ""):
        return setting_value, "flowscope setting"
    for var in (f"OTEL_EXPORTER_OTLP_LOGS_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        raw = env.get(var, "").strip()
        if raw:
            try:
                return parse(raw), var
            except ValueError as e:
                raise ConfigError(var, str(e)) from e
    return None, ""


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def parse_header_list(text: str) -> tuple[tuple[str, str], ...]:
    """``k=v,k2=v2`` (values URL-encoded, as the OTel specification says)."""
    out = []
    for item in parse_headers(text).split(","):
        if item.strip():
            key, _, value = item.partition("=")
            out.append((key.strip().lower(), unquote(value.strip())))
    return tuple(out)


def _endpoint_url(endpoint: str, source: str, protocol: str, insecure: bool) -> str:
    """Normalise an endpoint; the generic variable gets ``/v1/logs`` appended for HTTP.

    The scheme is lower-cased (it is case-insensitive): ``HTTPS://`` was taken for
    plaintext, so the HTTP transport skipped certificate checks and gRPC used none."""
    if "://" not in endpoint:
        endpoint = ("http://" if insecure else "https://") + endpoint
    scheme, separator, rest = endpoint.partition("://")
    endpoint = scheme.lower() + separator + rest
    if protocol == HTTP:
        path = urlsplit(endpoint).path
        if source == "OTEL_EXPORTER_OTLP_ENDPOINT" or path in ("", "/"):
            endpoint = endpoint.rstrip("/") + LOGS_PATH
    return endpoint


def _protocol_for(endpoint: str | None) -> str:
    """No protocol named anywhere: gRPC for an endpoint on the gRPC port 4317, else the
    specification's default, HTTP/protobuf (a convenience: ``localhost:4317`` means gRPC)."""
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        if parts.port == 4317:
            return GRPC
    return HTTP


def resolve(settings: OtlpSettings, env: Mapping[str, str]) -> OtlpTarget:
    """Merge settings, OTEL variables and defaults into one :class:`OtlpTarget`."""
    protocol, _ = _pick(settings.protocol, env, "PROTOCOL", _choice(GRPC, HTTP, "http/json"))
    if protocol == "http/json":
        raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json is not supported")
    insecure, _ = _pick(settings.insecure, env, "INSECURE", _bool)
    endpoint, source = _endpoint(settings.endpoint, env)
    protocol = protocol or _protocol_for(endpoint)
    if not endpoint:
        endpoint = DEFAULT_GRPC_ENDPOINT if protocol == GRPC else DEFAULT_HTTP_ENDPOINT
    url = _endpoint_url(endpoint, source, protocol, bool(insecure))
    headers, headers_source = _headers(settings.headers, env, protocol)
    compression, _ = _pick(settings.compression, env, "COMPRESSION", _choice("gzip", "none"))
    timeout, _ = _pick(settings.timeout, env, "TIMEOUT", _milliseconds)
    ca = _file(settings.ca_file, env, "CERTIFICATE", "ca_file")
    cert = _file(settings.client_cert, env, "CLIENT_CERTIFICATE", "client_cert")
    key = _file(settings.client_key, env, "CLIENT_KEY", "client_key")
    tls = url.startswith("https://")
    context = client_context(ca, cert, key) if tls or ca.path or cert.path or key.path else None
    if not tls:
        _refuse_plaintext_with_tls_files((ca, cert, key), url)
        _warn_plaintext_headers(headers, headers_source, url)
    return OtlpTarget(
        protocol=protocol,
        url=url,
        tls=tls,
        headers=headers,
        gzip=(compression or "gzip") == "gzip",
        ca_file=ca.path,
        client_cert=cert.path,
        client_key=key.path,
        timeout=timeout or 10.0,
        ssl=context,
    )


def _endpoint(setting: str, env: Mapping[str, str]) -> tuple[str | None, str]:
    """The endpoint and where it came from; the flowscope setting is checked again (it
    was when loaded, unless built): credentials in it would be sent as basic auth."""
    endpoint, source = _pick(setting, env, "ENDPOINT", parse_endpoint)
    if source == "flowscope setting":
        try:
            parse_endpoint(endpoint)
        except ValueError as e:
            raise ConfigError(setting_name("otlp", "endpoint"), str(e)) from e
    return endpoint, source


def _headers(
    setting: str, env: Mapping[str, str], protocol: str
) -> tuple[tuple[tuple[str, str], ...], str]:
    """The header list and where it came from; without the transports' own headers
    (:data:`TRANSPORT_HEADERS`, ``grpc-*``), and for gRPC without binary (``-bin``)
    metadata, whose values must be bytes: a text value there failed every export."""
    headers, source = _pick(setting, env, "HEADERS", parse_header_list)
    if isinstance(headers, str):  # the flowscope setting (checked when loaded, unless built)
        source = setting_name("otlp", "headers", flag=False)
        try:
            headers = parse_header_list(headers)
        except ValueError as e:
            raise ConfigError(source, str(e)) from e
    for key, _ in headers or ():
        if key in TRANSPORT_HEADERS or key.startswith("grpc-"):
            raise ConfigError(
                source, f"{key!r} is written by the transport itself: not an extra header"
            )
        if protocol == GRPC and key.endswith("-bin"):
            raise ConfigError(source, f"{key!r} would be binary gRPC metadata: not supported")
    return headers or (), source


def _warn_plaintext_headers(headers: tuple[tuple[str, str], ...], source: str, url: str) -> None:
    """One start-up warning: the headers (tokens, often) go out unencrypted with every
    export. Names only: a value is a secret."""
    if headers:
        names = ", ".join(dict.fromkeys(key for key, _ in headers))
        log.warning(
            "OTLP headers go unencrypted: the endpoint is plaintext (http://, or insecure "
            "gRPC); use TLS unless the collector is on this host or in this pod",
            extra={"setting": source, "headers": names, "url": redacted(url)},
        )


def _refuse_plaintext_with_tls_files(files: tuple[TlsFile, ...], url: str) -> None:
    """TLS files set while the endpoint is plaintext (``http://``, or no scheme with
    ``insecure``) would be loaded and never used: refused, naming the first one."""
    for tls_file in files:
        if tls_file.path:
            raise ConfigError(
                tls_file.setting,
                f"a TLS file is set but the OTLP endpoint is plaintext ({redacted(url)}): "
                "use an https:// endpoint (or, for gRPC without a scheme, insecure false), "
                "or unset the TLS files",
            )


def _milliseconds(text: str) -> float:
    """``OTEL_EXPORTER_OTLP_TIMEOUT``: milliseconds, greater than 0, as seconds."""
    return positive(float(text)) / 1000.0


def _file(value: str, env: Mapping[str, str], variable: str, setting: str) -> TlsFile:
    """A TLS file and the name of the setting or variable it came from."""
    path, source = _pick(value, env, variable, readable_file)
    if source in ("flowscope setting", ""):  # unset: named as flowscope's, to be set
        source = setting_name("otlp", setting)
    return TlsFile(path or "", source)
