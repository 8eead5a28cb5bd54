"""The NATS connection every service uses, and the JetStream streams of DESIGN.md.

``connect`` reconnects forever with capped backoff and counts disconnects; it supports
user/password, token, a credentials (JWT/NKey) file, an NKey seed file and TLS with a
CA and a client certificate — secrets come only from files or the environment, and URLs
are shown without their credentials. TLS, once configured, is TLS or no connection.
``ensure_streams`` creates the streams idempotently (or updates their retention when
they exist); a :class:`StreamKeeper` runs it again when a publish finds no stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import re
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nkeys
from flowscope.core import subjects
from flowscope.core.config import parse_secret, readable_file, setting, without_secrets
from flowscope.core.errors import ConfigError, ConnectionLostError, StartupError, described
from flowscope.core.logs import RateLimitedLog
from flowscope.core.runtime import Runtime, first_of, unless_stopped
from flowscope.core.tls import TlsFile, client_context, setting_name
from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, SlowConsumerError
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

MSG_ID_HEADER = "Nats-Msg-Id"  # JetStream drops a message whose id it already stored

log = logging.getLogger("flowscope.nats")

_SCHEMES = ("nats", "tls", "ws", "wss")
# What nats-server refuses in a consumer name (it names a subject token and a directory).
NOT_IN_CONSUMER_NAME = re.compile(r"[\s.*>/\\\x00-\x1f\x7f]")
MAX_CONSUMER_NAME = 255  # bytes; nats-server refuses a longer consumer name


def durable_base(suffixes: Iterable[str]) -> Callable[[str], str]:
    """The parse of a setting naming durable consumers ``<base>-<suffix>``, one per suffix.

    A bad name is refused at start-up rather than by the server at the first
    subscription, where it would be retried for ever: not empty, none of whitespace,
    ``.``, ``*``, ``>``, ``/``, ``\\`` or a control character, and short enough for the
    longest ``<base>-<suffix>`` to fit.
    """
    longest_suffix = max(len(suffix.encode()) for suffix in suffixes)

    def parse(value: str) -> str:
        if not value:
            raise ValueError("empty: the durable consumers need a name")
        bad = NOT_IN_CONSUMER_NAME.search(value)
        if bad:
            raise ValueError(
                f"{value!r} is not a JetStream consumer name: it holds {bad.group()!r} "
                "(no whitespace, '.', '*', '>', '/', '\\' or control character)"
            )
        longest = len(value.encode()) + 1 + longest_suffix
        if longest > MAX_CONSUMER_NAME:
            raise ValueError(
                f"too long: the consumer names <durable>-<suffix> may have "
                f"{MAX_CONSUMER_NAME} bytes, {longest} with this one"
            )
        return value

    return parse


def parse_urls(value: str) -> str:
    """Validate a comma-separated list of NATS URLs (``nats://host:port``).

    ``user:password@`` or ``token@`` is refused rather than used, wherever the URL comes
    from: a flag is in ``ps`` for any user (a secret's own flag is refused for that),
    and a URL appears in logs and error lines. The credentials have their settings.
    """
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("no URL given")
    for url in urls:
        parts = urlsplit(url)
        shown = repr(without_secrets(url))
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise ValueError(f"{shown} is not a NATS URL (nats://host:port)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as e:
            raise ValueError(f"{shown} has a bad port") from e
        if "@" in parts.netloc:
            raise ValueError(
                f"credentials in the URL {shown} are refused (URLs show in ps and logs): "
                "set FLOWSCOPE_NATS_USER and FLOWSCOPE_NATS_PASSWORD, or FLOWSCOPE_NATS_TOKEN"
            )
    return ",".join(urls)


_CREDS_JWT = b"BEGIN NATS USER JWT"
_CREDS_SEED = b"BEGIN USER NKEY SEED"
_JWT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def creds_file(value: str) -> str:
    """A readable credentials file with a user JWT and a user NKey seed, checked at
    start-up as at each connection (:func:`_creds_callbacks`). The error never shows
    what the file holds."""
    readable_file(value)
    if value:
        _, seed = _read_creds(value)
        seed[:] = bytes(len(seed))
    return value


def _read_creds(path: str) -> tuple[bytes, bytearray]:
    """The user JWT and user NKey seed of a creds file, found as nats-py finds them; a
    ``ValueError`` naming the file when either is missing or malformed: nats-py loops
    for ever past the end of a file without a JWT (full CPU, deaf to SIGTERM), and
    fails every attempt without a seed. The caller wipes the seed."""
    text = bytearray(Path(path).read_bytes())
    seed = _line_after(text, _CREDS_SEED)
    try:
        jwt = bytes(_line_after(text, _CREDS_JWT))
        if not _JWT.fullmatch(jwt):
            raise ValueError(
                f"{path} holds no NATS user JWT (a JWT on the line after "
                "-----BEGIN NATS USER JWT-----)"
            )
        if not _is_user_seed(seed):
            raise ValueError(
                f"{path} holds no user NKey seed (SU... on the line after "
                "-----BEGIN USER NKEY SEED-----)"
            )
    except ValueError:
        seed[:] = bytes(len(seed))
        raise
    finally:
        text[:] = bytes(len(text))
    return jwt, seed


class CredentialsFileError(NatsError):
    """A credentials file (``setting``: ``creds_file`` or ``nkey_seed_file``), read for a
    (re)connection, is unreadable or malformed: that attempt fails, and the next one
    reads the file again."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(problem)

    def __str__(self) -> str:
        return f"{setting_name('nats', self.setting)}: {self.problem}"


@contextmanager
def _checked(setting: str, path: str) -> Iterator[None]:
    """Turn a bad credentials file, read for a connection, into a
    :class:`CredentialsFileError`: a nats-py error, which its reconnection loop reports
    and carries on from (any other exception ends that loop for good, silently). The
    problem names the file, never what it holds."""
    try:
        yield
    except ValueError as e:
        raise CredentialsFileError(setting, str(e)) from e
    except OSError as e:
        raise CredentialsFileError(setting, f"cannot read {path}: {e.strerror}") from e


def _creds_callbacks(path: str) -> dict[str, Any]:
    """nats-py's ``user_jwt_cb`` and ``signature_cb`` for a creds file, in place of its
    path (``user_credentials``).

    Given the path, nats-py reads the file at every connection and reconnection without
    checking it: replaced under a running service by a malformed one (a bad rotation),
    it hung the service at its next reconnection (see :func:`_read_creds`). Each
    callback reads the file anew, so a rotated file is used from the next connection,
    and checks it as start-up does; a bad file fails that attempt (:func:`_checked`).
    Nothing of it is kept between connections: no last good seed stays in memory, as
    none does with nats-py's own reading.
    """

    def read() -> tuple[bytes, bytearray]:
        with _checked("creds_file", path):
            return _read_creds(path)

    def user_jwt() -> bytes:
        jwt, seed = read()
        seed[:] = bytes(len(seed))
        return jwt

    def signature(nonce: str) -> bytes:
        _, seed = read()
        try:
            return _signed(nkeys.from_seed(seed), nonce)
        finally:
            seed[:] = bytes(len(seed))

    return {"user_jwt_cb": user_jwt, "signature_cb": signature}


def _line_after(text: bytearray, marker: bytes) -> bytearray:
    """The line after the first line holding ``marker``, without its line feed, as
    nats-py takes it (empty when there is no such line, or it does not end)."""
    at = text.find(marker)
    start = text.find(b"\n", at) + 1 if at >= 0 else 0
    end = text.find(b"\n", start) if start else -1
    return text[start:end] if end >= 0 else bytearray()


def _is_user_seed(seed: bytearray) -> bool:
    try:
        prefix, _ = nkeys.decode_seed(seed)
    except Exception:  # nkeys raises its own errors, and binascii's
        return False
    return bool(prefix == nkeys.PREFIX_BYTE_USER)


def nkey_seed_file(value: str) -> str:
    """A readable file holding an NKey seed, checked at start-up as at each connection
    (:func:`_seed_signature`); the error never shows what it holds."""
    readable_file(value)
    if value:
        _seed_key(value).wipe()
    return value


def _seed_key(path: str) -> nkeys.KeyPair:
    """The key pair of the NKey seed file ``path``; a ``ValueError`` naming the file when
    it holds no seed, or one that is not a user's: an account or operator seed signs
    the nonce all the same, and the server's refusal of its public key would be retried
    for ever. The caller wipes the key."""
    seed = bytearray(Path(path).read_bytes().strip())
    try:
        key = nkeys.from_seed(seed)
    except Exception as e:  # nkeys raises its own errors, and binascii's
        seed[:] = bytes(len(seed))
        raise ValueError(f"{path} does not hold an NKey seed") from e
    if not _is_user_seed(seed):
        seed[:] = bytes(len(seed))
        key.wipe()
        raise ValueError(f"{path} holds an NKey seed that is not a user's (SU...)")
    return key


def _seed_signature(path: str, nonce: str) -> tuple[str, bytes]:
    """The public NKey of the seed file ``path`` and its signature of a server's
    ``nonce`` (base64), the file read and checked anew: a bad one is a
    :class:`CredentialsFileError` (:func:`_checked`)."""
    with _checked("nkey_seed_file", path):
        key = _seed_key(path)
    return key.public_key.decode(), _signed(key, nonce)


def _signed(key: nkeys.KeyPair, nonce: str) -> bytes:
    """A server's ``nonce`` signed by ``key`` (base64), as CONNECT carries it; the key is
    wiped after."""
    try:
        return base64.b64encode(key.sign(nonce.encode()))
    finally:
        key.wipe()


# What nats-server takes in a stream's configuration: it refuses any other value when
# the stream is created or updated, which every service does at start-up and would then
# retry for ever (a crash loop) instead of stopping on one line naming the setting.
MIN_MAX_AGE = 0.1  # seconds (100 ms); 0 is no limit
MAX_MAX_AGE = 9_223_372_036  # seconds: nanoseconds in a signed 64-bit integer
MAX_REPLICAS = 5


def stream_max_age(value: float) -> float:
    """A stream's retention in seconds as nats-server takes it: 0 (unlimited), or from
    MIN_MAX_AGE to MAX_MAX_AGE (a larger one overflows its nanoseconds)."""
    if value != 0 and not MIN_MAX_AGE <= value <= MAX_MAX_AGE:
        raise ValueError(
            f"must be 0 (unlimited) or from {MIN_MAX_AGE} to {MAX_MAX_AGE} seconds "
            "(nats-server refuses a stream's max_age outside)"
        )
    return value


def stream_replicas(value: int) -> int:
    """A stream's replicas as nats-server takes them: 0 (its default, 1) to MAX_REPLICAS."""
    if not 0 <= value <= MAX_REPLICAS:
        raise ValueError(f"must be from 0 to {MAX_REPLICAS} (nats-server's limit)")
    return value


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """How to reach NATS (``--nats-*``, ``FLOWSCOPE_NATS_*``, ``nats:`` in YAML)."""

    url: str = setting(
        "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated", parse=parse_urls
    )
    user: str = setting("", "user name for user/password authentication", parse=parse_secret)
    password: str = setting(
        "", "password (environment or YAML file only)", parse=parse_secret, secret=True
    )
    token: str = setting(
        "", "authentication token (environment or YAML file only)", parse=parse_secret,
        secret=True,
    )  # fmt: skip
    creds_file: str = setting("", "NATS credentials file (JWT + NKey seed)", parse=creds_file)
    nkey_seed_file: str = setting(
        "", "file holding a user's NKey seed (SU...), for a server that lists the user's "
        "public NKey (no JWT)", parse=nkey_seed_file,
    )  # fmt: skip
    tls_ca: str = setting(
        "", "CA bundle to verify the server (enables TLS: a server that does not offer TLS "
        "is refused)", parse=readable_file,
    )  # fmt: skip
    tls_cert: str = setting(
        "", "client certificate for mutual TLS (PEM; set tls_key with it)", parse=readable_file
    )
    tls_key: str = setting(
        "", "client certificate's unencrypted private key (PEM; set tls_cert with it)",
        parse=readable_file,
    )  # fmt: skip
    tls_server_name: str = setting(
        "", "name the server's certificate must carry (enables TLS; empty: the URL's host), "
        "for a URL by address or through a tunnel",
    )  # fmt: skip
    tls_handshake_first: bool = setting(
        False, "TLS handshake before the server's INFO (enables TLS); only for a server "
        "configured with tls { handshake_first: true }, which refuses other clients",
    )  # fmt: skip
    connect_timeout: float = setting(5.0, "seconds to wait for one connection attempt")
    reconnect_wait_max: float = setting(
        5.0, "upper bound in seconds of the backoff between reconnection attempts"
    )
    stream_max_age: float = setting(
        86400.0, "seconds JetStream keeps messages (bounded retention; 1 day; 0: unlimited, "
        "else 0.1 to 9223372036)", parse=stream_max_age,
    )  # fmt: skip
    stream_max_bytes: int = setting(
        1 << 30, "bytes each flowscope stream may hold before discarding the oldest (1 GiB)"
    )
    stream_replicas: int = setting(
        1, "JetStream stream replicas (3 in a clustered NATS; at most 5)", parse=stream_replicas
    )


@dataclass(slots=True)
class NatsMetrics:
    """Connection health as Prometheus metrics."""

    disconnects: Counter
    reconnects: Counter
    errors: Counter
    connected: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> NatsMetrics:
        return cls(
            Counter(
                "flowscope_nats_disconnects",
                "NATS connections lost (not a close as the service stops)",
                registry=registry,
            ),
            Counter("flowscope_nats_reconnects", "NATS reconnections", registry=registry),
            Counter("flowscope_nats_errors", "NATS client errors", registry=registry),
            Gauge("flowscope_nats_connected", "1 while connected to NATS", registry=registry),
        )


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """TLS context from the CA / client certificate settings (None: plain TCP).

    Any TLS setting, or a ``tls://`` / ``wss://`` URL, enables TLS; the files are checked
    here (both or neither of certificate and key, PEM, an unencrypted key of its
    certificate), a bad one a :class:`ConfigError` naming its setting.
    """
    wants_tls = (
        settings.tls_ca
        or settings.tls_cert
        or settings.tls_key
        or settings.tls_handshake_first
        or settings.tls_server_name
        or any(u.startswith(("tls://", "wss://")) for u in settings.url.split(","))
    )
    if not wants_tls:
        return None
    return client_context(
        *(TlsFile(getattr(settings, n), setting_name("nats", n)) for n in _TLS_FILES)
    )


_TLS_FILES = ("tls_ca", "tls_cert", "tls_key")


class TlsNotOfferedError(NatsError):
    """A server did not offer TLS although TLS is configured: nothing was sent to it."""

    def __init__(self, server: str) -> None:
        self.server = server
        super().__init__(server)

    def __str__(self) -> str:
        return (
            f"{self.server} did not offer TLS, which is configured (tls:// URL or "
            "FLOWSCOPE_NATS_TLS_*): not connecting without it"
        )


class _Client(NATS):
    """nats-py's client, refusing a plaintext connection when TLS is configured, and
    reading an NKey seed file checked at each connection.

    TLS: nats-py upgrades a connection to TLS only when the server's INFO says
    ``tls_required``; otherwise it sends CONNECT — password or token included — in
    clear, whatever the URL's scheme or the SSL context given: a server without TLS, or
    a man in the middle removing the flag, got the credentials. nats-py has no option
    for this, so this one override: ``_process_connect_init`` hands the INFO of every
    connection (first or reconnection, ``initial_connection=True``) to ``_process_info``
    before it decides on TLS and before CONNECT; raising there ends that attempt with
    nothing sent. Connections that are TLS before the INFO (``wss://``, handshake
    first) pass.
    """

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and "tls" in self.options and not self._will_be_tls(info):
            assert self._current_server is not None  # set before any INFO is read
            raise TlsNotOfferedError(without_secrets(self._current_server.uri.geturl()))
        await super()._process_info(info, initial_connection)

    def _will_be_tls(self, info: dict[str, Any]) -> bool:
        assert self._current_server is not None
        scheme = self._current_server.uri.scheme
        if scheme == "wss" or self.options["tls_handshake_first"]:
            return True  # already TLS when the INFO arrives
        return bool(info.get("tls_required")) and scheme != "ws"

    def _setup_nkeys_seed_connect(self) -> None:
        """Sign each connection's nonce with the seed file as it is then.

        nats-py (``nkeys_seed``) reads the file unchecked at each connection: one made
        malformed under a running service (emptied, a bad rotation) raised an nkeys
        error that ended its reconnection loop silently, the client left disconnected
        for good and not closed; and it sends the public NKey it derived once, so a
        rotated seed was refused for ever. Here each CONNECT reads and checks the file
        (a bad one fails that attempt only, :func:`_seed_signature`) and names the
        public key of the seed that signed: nats-py's ``_connect_command`` calls
        ``_signature_cb`` before it reads ``_public_nkey``.
        """
        path = self._nkeys_seed
        assert path  # nats-py calls this only with nkeys_seed, which connect_options sets

        def signature(nonce: str) -> bytes:
            self._public_nkey, signed = _seed_signature(path, nonce)
            return signed

        self._signature_cb = signature


def connect_options(
    settings: NatsSettings,
    name: str,
    metrics: NatsMetrics,
    closing: Callable[[], bool] = lambda: False,
    lost: Callable[[], None] = lambda: None,
    reported: Callable[[Exception], bool] = lambda e: False,
) -> dict[str, Any]:
    """Keyword arguments for nats-py's ``connect`` (split out so tests can inspect them).

    ``closing``: whether :func:`close` is closing the client (the service stopping) when
    nats-py reports the disconnection: that is neither a warning nor counted.
    ``lost``: called when nats-py closes the client by itself, which it does for good
    on most of the server's ``-ERR`` lines (an ``Authorization Violation`` after the
    server's users changed, an expired JWT): nothing reconnects it after that.
    ``reported``: whether the caller names this error itself instead of a warning of its
    own (:func:`connect`'s first connection: its retry line or start-up error names it).
    A reconnection refused for its credentials (the server restarted with other users)
    is retried by nats-py; its warning says so and names the settings in use.
    """
    opts: dict[str, Any] = {
        "servers": settings.url.split(","),
        "name": f"flowscope-{name}",
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_wait_max,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
        **_event_callbacks(settings, metrics, closing, lost, reported),
        # Buffer publishes while reconnecting (bytes); beyond it publish raises and the
        # caller's bounded buffer takes over.
        "pending_size": 8 * 1024 * 1024,
    }
    opts.update(_auth_options(settings))
    opts.update(_tls_options(settings))
    return opts


def _event_callbacks(
    settings: NatsSettings,
    metrics: NatsMetrics,
    closing: Callable[[], bool],
    lost: Callable[[], None],
    reported: Callable[[Exception], bool],
) -> dict[str, Any]:
    """nats-py's ``disconnected_cb``, ``reconnected_cb``, ``error_cb`` and ``closed_cb``:
    the connection's metrics and log lines (arguments: :func:`connect_options`).

    nats-py reports a subscription that falls behind once per message it drops: those
    are counted each, logged rate-limited (a warning per message flooded the log with
    thousands of lines a second, ``flowscope observe``'s stderr with them)."""
    limited = RateLimitedLog(log)

    async def disconnected() -> None:
        metrics.connected.set(0)
        if closing():
            log.info("NATS connection closed")
            return
        metrics.disconnects.inc()
        log.warning("NATS disconnected")

    async def reconnected() -> None:
        metrics.reconnects.inc()
        metrics.connected.set(1)
        log.info("NATS reconnected")

    async def error(e: Exception) -> None:
        metrics.errors.inc()
        if reported(e):
            return
        if isinstance(e, SlowConsumerError):
            limited.warning(
                "slow-consumer", "NATS subscription fell behind: messages dropped",
                subject=e.subject, error=described(e),
            )  # fmt: skip
        elif _refused(e):
            log.warning(_REFUSED, extra={"error": described(e), **_credentials(settings)})
        else:
            log.warning("NATS error", extra={"error": described(e)})

    async def closed() -> None:
        metrics.connected.set(0)
        if not closing():
            lost()

    return {
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        "closed_cb": closed,
    }


def _auth_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py's options for the credentials that are set: user and password, token,
    creds file or NKey seed file (not both: a :class:`ConfigError`)."""
    opts: dict[str, Any] = {}
    if settings.user:
        opts["user"], opts["password"] = settings.user, settings.password
    if settings.token:
        opts["token"] = settings.token
    if settings.creds_file and settings.nkey_seed_file:
        raise ConfigError(
            setting_name("nats", "nkey_seed_file"),
            f"set it or {setting_name('nats', 'creds_file')}, not both",
        )
    if settings.creds_file:
        opts.update(_creds_callbacks(settings.creds_file))
    if settings.nkey_seed_file:
        opts["nkeys_seed"] = settings.nkey_seed_file
    return opts


def _tls_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py's TLS options (:func:`tls_context`); none for plain TCP."""
    tls = tls_context(settings)
    if tls is None:
        return {}
    opts: dict[str, Any] = {"tls": tls, "tls_handshake_first": settings.tls_handshake_first}
    if settings.tls_server_name:
        opts["tls_hostname"] = settings.tls_server_name
    return opts


async def connect(
    settings: NatsSettings, name: str, registry: CollectorRegistry, *, retry: bool = True
) -> NATS:
    """Connect to NATS; with ``retry``, keep trying (logged, capped backoff) until it answers.

    Without ``retry`` an unreachable server is a :class:`StartupError` (exit 2). Once
    connected, the client reconnects by itself forever — unless nats-py closes it, which
    :func:`until_lost` turns into the service's stop.
    """
    metrics = NatsMetrics.create(registry)
    client: list[NATS] = []
    lost = asyncio.Event()
    # What went wrong in an attempt, as nats-py reported it to the error callback: it
    # raises "no servers available" once every server failed, which names no cause.
    causes: list[Exception] = []

    def reported(e: Exception) -> bool:
        if client:
            return False
        causes.append(e)
        return True

    opts = connect_options(
        settings,
        name,
        metrics,
        lambda: bool(client) and client[0] in _closing,
        lost.set,
        reported,
    )
    nc = await _first_connection(settings, opts, causes, retry)
    client.append(nc)
    _lost[nc] = lost
    metrics.connected.set(1)
    url = without_secrets(nc.connected_url.geturl()) if nc.connected_url else ""
    log.info("NATS connected", extra={"url": url})
    return nc


async def _first_connection(
    settings: NatsSettings, opts: dict[str, Any], causes: list[Exception], retry: bool
) -> NATS:
    """:func:`connect`'s first connection. With ``retry``, rounds of attempts until one
    succeeds, each failed round logged (:func:`_retry_line`) and followed by a capped
    backoff; without, a failed round is a :class:`StartupError`. ``causes``: what
    nats-py reported to ``opts``' error callback during a round (``reported`` of
    :func:`connect_options`), cleared before each."""
    # A bounded initial attempt (nats-py would otherwise loop silently forever on an
    # unreachable server); our loop below retries with logging. Once connected, the
    # client reconnects by itself without limit.
    # One attempt per round tries each server twice (nats-py's least), back to back: the
    # wait between rounds is this loop's, the one its retry line announces.
    opts = dict(opts, allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0)
    shown = without_secrets(settings.url)
    delay = 0.1
    while True:
        causes.clear()
        try:
            return await _connect_round(settings, opts)
        except Exception as e:  # nats-py raises a variety of errors for "unreachable"
            if _cancellation_lost():
                raise asyncio.CancelledError() from e
            not_tls = [c for c in (*causes, e) if isinstance(c, TlsNotOfferedError)]
            if not_tls:  # configuration, not reachability: no retry
                raise StartupError("nats", str(not_tls[0])) from e
            cause = causes[-1] if causes else e
            if not retry:
                raise StartupError("nats", f"cannot connect to {shown}: {described(cause)}") from e
            message, fields = _retry_line(cause, settings)
            log.warning(
                message,
                extra={"url": shown, "error": described(cause), "retry_in": delay, **fields},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.reconnect_wait_max)


def _cancellation_lost() -> bool:
    """Whether this task was cancelled while nats-py raised something else in its place.

    Python 3.11's ``asyncio.wait_for``, which nats-py awaits the TLS handshake and the
    server's first answer with, drops a cancellation that arrives as its inner future
    completes (CPython gh-86296): the handshake's error came out instead of the
    CancelledError, this loop retried it, and its next sleep was no longer cancelled —
    a connect under ``asyncio.timeout`` (a stop during start-up, a test's deadline)
    went on for ever (1 of ~70 cancellations at random moments here). A cancellation
    not yet answered shows in ``Task.cancelling()``.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _connect_round(settings: NatsSettings, opts: dict[str, Any]) -> NATS:
    """One round of attempts (``opts``), from each server in turn in a random order (as
    nats-py shuffles its pool); the client, connected, then reconnects by itself forever.

    Without reconnection nats-py's first connection gives up on its pool as soon as one
    server fails the handshake (refused credentials, no INFO in time, a bad
    certificate): with several URLs, the others were not tried. With it, nats-py waits
    for ever to close a connection whose TLS handshake failed. So each attempt starts
    the pool, in the same order, from another server.
    """
    servers = random.sample(opts["servers"], len(opts["servers"]))
    *others, last = [servers[first:] + servers[:first] for first in range(len(servers))]
    for pool in others:
        with contextlib.suppress(Exception):  # the next pool starts from another server
            return await _connected(settings, opts, pool)
    return await _connected(settings, opts, last)


async def _connected(settings: NatsSettings, opts: dict[str, Any], pool: list[str]) -> NATS:
    """A client connected from the first server of ``pool`` (else the next nats-py
    reaches), that then reconnects by itself forever."""
    nc = _Client()
    await nc.connect(**dict(opts, servers=pool, dont_randomize=True))
    nc.options.update(
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=settings.reconnect_wait_max,
        dont_randomize=False,
    )
    return nc


def _retry_line(cause: Exception, settings: NatsSettings) -> tuple[str, dict[str, str]]:
    """What :func:`connect` logs before it tries again: the message and its own fields.

    A certificate that failed verification (wrong CA, wrong server name) or refused
    credentials come from a server that answered, and a credentials file that cannot be
    used from no server at all: not "unreachable", and the settings that decide it are
    named (never their values). Each is retried all the same, as Kubernetes agents do:
    a Secret may be rotated into place — during a certificate rotation the server may
    present the new certificate before, or the old one after, this client's CA bundle
    matches it (the bundle is read once, at start-up); the credentials files are read
    at each attempt.
    """
    if isinstance(cause, ssl.SSLCertVerificationError):
        names = ", ".join(setting_name("nats", n) for n in ("tls_ca", "tls_server_name"))
        return "NATS server's TLS certificate not verified; retrying", {"settings": names}
    if isinstance(cause, CredentialsFileError):
        names = setting_name("nats", cause.setting)
        return "NATS credentials file not usable; retrying", {"settings": names}
    if _refused(cause):
        return f"{_REFUSED}; retrying", _credentials(settings)
    return "NATS unreachable; retrying", {}


_REFUSED = "NATS server refused the credentials"
# nats-server's -ERR texts for credentials it does not accept; nats-py raises them as
# plain errors while it connects, and as AuthorizationError on a connection.
_REFUSALS = ("authorization violation", "authentication expired", "authentication revoked")
_CREDENTIALS = ("user", "password", "token", "creds_file", "nkey_seed_file")


def _refused(error: Exception) -> bool:
    """Whether the server refused this client's credentials (or their absence)."""
    text = str(error).lower()
    return isinstance(error, AuthorizationError) or (
        isinstance(error, NatsError) and any(r in text for r in _REFUSALS)
    )


def _credentials(settings: NatsSettings) -> dict[str, str]:
    """The ``settings`` log field of a refusal: the variables of the credentials in use."""
    used = [setting_name("nats", n, flag=False) for n in _CREDENTIALS if getattr(settings, n)]
    return {"settings": ", ".join(used) or "none (no NATS credentials are set)"}


async def flush(nc: NATS, flush_timeout: int = 2) -> None:
    """Return once the server has handled every command this client has sent or buffered
    (a SUB before another client publishes to it, a PUB before the client closes).

    nats-py's ``flush`` writes its PING straight to the socket, ahead of the commands
    still in its own buffer, which its flusher task writes after it: the server answers
    that PING before it reads them, so the PONG confirms none of them (the server's trace
    shows ``PING`` before ``SUB``). The first flush lets the flusher write them; the
    second one's PING follows them on the wire, and nats-server handles a connection's
    commands in order. Raises what nats-py's ``flush`` raises (``flush_timeout``: each).
    """
    await nc.flush(flush_timeout)
    await nc.flush(flush_timeout)


# Clients that close() is closing: their disconnection is the service stopping, not a
# lost connection (nats-py also closes a client itself, on a server's -ERR).
_closing: weakref.WeakSet[NATS] = weakref.WeakSet()
# Each connected client's event, set when nats-py closed it by itself.
_lost: weakref.WeakKeyDictionary[NATS, asyncio.Event] = weakref.WeakKeyDictionary()


async def until_lost(nc: NATS, stopping: asyncio.Event) -> None:
    """A root task for a service: returns once the service is stopping; raises
    :class:`ConnectionLostError` if nats-py closes the client by itself first.

    A closed client never reconnects: its publishes, fetches and acks fail from then on
    while ``/readyz`` would go on saying ready. Stopping (exit status 1) lets the
    orchestrator start the service again with a fresh connection — reading the
    credentials file anew — and the durable consumers resume where they were acked.
    """
    lost = _lost[nc]
    await first_of(lost.wait(), stopping.wait())
    if lost.is_set() and not stopping.is_set():
        error = nc.last_error
        problem = described(error) if error else "closed by the client"
        raise ConnectionLostError("NATS", problem)


async def close(nc: NATS, flush_timeout: int = 2) -> None:
    """Flush and close a service's connection as it stops; never raises.

    Not ``drain``: a service has awaited its publishes and sent its acks by now, and
    draining pull subscriptions waits out their pending fetches. A server that has gone
    away (stopped first, or unreachable) is logged, and the stop goes on: nats-py's
    ``close`` raises ``ConnectionResetError`` when it holds commands for a connection
    that is already lost.
    """
    if nc.is_closed:
        return
    _closing.add(nc)
    error = ""
    try:
        await flush(nc, flush_timeout)
    except Exception as e:  # timeout, no connection, closed: what close meets too
        error = described(e)
    try:
        await nc.close()
    except Exception as e:
        error = error or described(e)
    if error:
        log.warning("NATS closed without a final flush", extra={"error": error})


async def connect_service(
    rt: Runtime, settings: NatsSettings, name: str
) -> tuple[NATS, JetStreamContext, StreamKeeper] | None:
    """A service's connection once NATS answers, or None when the service is told to
    stop first; closed as the service stops, its loss stopping the service
    (:func:`until_lost`); the streams made, and a :class:`StreamKeeper` to make them
    again with the same settings."""
    nc = await unless_stopped(rt, connect(settings, name, rt.registry))
    if nc is None:
        return None
    rt.stack.push_async_callback(close, nc)
    rt.spawn(until_lost(nc, rt.stopping), "nats")
    js = nc.jetstream()
    try:
        await ensure_streams(js, settings)
    except ServiceUnavailableError as e:
        raise StartupError("nats", _no_jetstream(nc, e)) from e
    except StreamRefusedError as e:
        raise StartupError("nats", str(e)) from e
    return nc, js, StreamKeeper(lambda: ensure_streams(js, settings))


def _no_jetstream(nc: NATS, error: ServiceUnavailableError) -> str:
    """The start-up error's problem when JetStream does not answer (503: nats-py's "no
    responders", or the server's own description): the server, without JetStream, or
    the account without it, cannot run a service, which no retry changes."""
    url = without_secrets(nc.connected_url.geturl()) if nc.connected_url else "NATS"
    why = error.description or "no responders"
    return (
        f"JetStream is not available on {url} ({why}): start nats-server with JetStream "
        "(-js, or jetstream {} in its configuration), enabled for this account"
    )


def stream_config(spec: subjects.StreamSpec, settings: NatsSettings) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        description=spec.description,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.stream_max_age,
        max_bytes=settings.stream_max_bytes,
        num_replicas=settings.stream_replicas,
        # Atomic batch publish (nats-server 2.12+): one ack per batch of messages, which
        # the enricher uses for its fan-out. Older servers ignore the field.
        allow_atomic=True,
        # 0: the server's default (two minutes); the window may not exceed max_age.
        duplicate_window=settings.stream_max_age if spec.dedup_whole_retention else 0,
    )


async def consumer_missing(
    info: Awaitable[Any], replaced: Callable[[Any], bool] = lambda found: False
) -> bool:
    """Whether the server says a consumer (or its stream) does not exist, asked by
    ``info`` (a ``consumer_info`` call), or has one that ``replaced`` says is not the
    one asked for (given its ConsumerInfo). False when it cannot tell (NATS away): that
    is a disconnection, which the client recovers from by itself, not a loss."""
    try:
        found = await info
    except NotFoundError:
        return True
    except Exception:
        return False
    return replaced(found)


STREAM_NAME_IN_USE = 10058  # err_code: a stream of that name exists (with another config)


class StreamRefusedError(NatsError):
    """nats-server refused to create or update a flowscope stream (``action``) for a
    reason no retry changes (``error``, its JetStream API error): a stream of that name
    left with a configuration the server does not change (another retention or storage,
    as an earlier version or an operator made it), or another stream capturing its
    subjects. A nats-py error, so that a service running on retries it as before."""

    def __init__(self, stream: str, action: str, error: APIError) -> None:
        self.stream = stream
        self.action = action
        self.error = error
        super().__init__(stream)

    def __str__(self) -> str:
        return (
            f"nats-server refused to {self.action} stream {self.stream}: "
            f"{self.error.description} (err_code {self.error.err_code}): a stream made "
            "otherwise (by hand, by an earlier version) is in the way; change or remove it "
            "(nats stream edit, nats stream rm)"
        )


async def ensure_streams(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create every flowscope stream, or update its limits if it exists (idempotent).

    A refusal other than JetStream being unavailable is a :class:`StreamRefusedError`:
    before, one for subjects another stream captures was followed by an update of a
    stream that does not exist, the start-up ending on a traceback of "stream not
    found", and one for an existing stream's retention on a traceback too."""
    for spec in subjects.STREAMS:
        config = stream_config(spec, settings)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            if await _created(js, config):
                continue
        try:
            await js.update_stream(config)
        except ServiceUnavailableError:
            raise
        except APIError as e:
            raise StreamRefusedError(spec.name, "update", e) from e


async def _created(js: JetStreamContext, config: StreamConfig) -> bool:
    """Create a stream; False when another replica created it meanwhile (its name in
    use: it is to be updated)."""
    try:
        await js.add_stream(config)
    except ServiceUnavailableError:
        raise
    except APIError as e:
        if isinstance(e, BadRequestError) and e.err_code == STREAM_NAME_IN_USE:
            return False
        raise StreamRefusedError(str(config.name), "create", e) from e
    log.info("stream created", extra={"stream": config.name})
    return True


# What a JetStream publish raises when no stream captures its subject: nats-py's "no
# responders" (a 503: what nats-server answers for a stream deleted, or lost with its
# store), or the JetStream API's "stream not found" (404).
NO_STREAM = (NoStreamResponseError, NotFoundError)
STREAM_NOT_FOUND = 10059  # the JetStream API's err_code: no stream of that name


def stream_not_found(error: Exception) -> bool:
    """Whether the JetStream API answered that the stream does not exist (not: that
    JetStream or NATS is away)."""
    return isinstance(error, NotFoundError) and error.err_code == STREAM_NOT_FOUND


RECREATE_AFTER = 2.0  # seconds at least between two attempts to make the streams again
RECREATE_MAX = 10.0  # seconds at most between two failed attempts (the backoff's cap)


class StreamKeeper:
    """Makes the streams again (``ensure``: :func:`ensure_streams`, the configuration of
    start-up) after a publish found none: an operator deleted one (``nats stream rm``),
    or NATS came back without its store. Until then every publish to it fails, and
    nothing else would make it again while the service runs.

    One keeper serves every publisher of a service: publishes
    failing at once make one attempt, not one each, and attempts come at least
    RECREATE_AFTER seconds apart, failed ones backing off up to RECREATE_MAX, so that
    replicas retrying their work do not hammer a server that cannot create streams.
    """

    def __init__(self, ensure: Callable[[], Awaitable[None]] | None) -> None:
        self._ensure = ensure  # None: the streams are someone else's to make
        self._lock = asyncio.Lock()
        self.generation = 0  # recreations so far
        self._failures = 0  # consecutive failed attempts: their backoff grows
        self._next = 0.0  # time.monotonic() before which none is tried
        self._failed_log = RateLimitedLog(log)

    async def recreate(self, generation: int, error: Exception, end: float = math.inf) -> bool:
        """Make the streams again after a publish failed with ``error`` because no
        stream captured its subject (:data:`NO_STREAM`, or the like) — unless they were
        made since it started (``generation``: :attr:`generation` then) or the last attempt is too
        recent. Runs by ``end`` (``time.monotonic()``). True when the streams were made
        again since ``generation``; the caller retries its publish either way.

        Logged once per loss of the streams (the failed attempts meanwhile rate-limited).
        """
        if self._ensure is None:
            return False
        async with self._lock:
            now = time.monotonic()
            if generation != self.generation:
                return True
            if now < self._next or now >= end:
                return False
            if not self._failures:
                log.warning(
                    "no stream answers a publish (deleted, or NATS lost its store?); "
                    "making the streams again",
                    extra={"error": repr(error)},
                )
            try:
                async with asyncio.timeout(None if math.isinf(end) else end - now):
                    await self._ensure()
            except Exception as e:  # NATS away again, JetStream not ready, the deadline
                self._failures += 1
                backoff = min(RECREATE_MAX, RECREATE_AFTER * 2 ** (self._failures - 1))
                self._next = time.monotonic() + backoff
                self._failed_log.warning(
                    "recreate-streams", "making the streams again failed; will retry",
                    error=repr(e), retry_in=backoff,
                )  # fmt: skip
                return False
            self._failures = 0
            self._next = time.monotonic() + RECREATE_AFTER
            self.generation += 1
            log.warning("streams made again; publishing resumes")
            return True


async def dead_letter(
    nc: NATS,
    component: str,
    subject: str,
    headers: dict[str, str] | None,
    body: bytes,
    reason: str,
    msg_id: str = "",
) -> bool:
    """Copy a message this component could not process to ``flowscope.dlq.<component>``.

    The original subject and the reason travel in headers; the body is kept byte for byte.
    With ``msg_id`` the copy is published through JetStream with that ``Nats-Msg-Id``:
    copies that several consumers make of one bad message (each exporter sink has its
    own consumer) are stored once, the DLQ stream dropping the others over its whole
    retention. Returns whether this copy was stored (False: a duplicate, dropped).

    The original's ``Nats-*`` headers are dropped: they describe how it was published
    (``Nats-Msg-Id``, ``Nats-Batch-Id`` of an atomic batch, expected-last checks) and
    would make the server treat this copy as part of that publish (a broken batch,
    a duplicate) instead of storing it. So are the original's other headers that the
    copy cannot carry (:func:`_copied_headers`), their number in DLQ_DROPPED_HEADER.
    """
    reason = reason[:1024]
    own = {subjects.DLQ_SUBJECT_HEADER: subject, **({MSG_ID_HEADER: msg_id} if msg_id else {})}
    out = _copied_headers(headers or {}, own, reason, body, nc.max_payload)
    body = _fit(out, body, reason, nc.max_payload)
    if not msg_id:
        await nc.publish(subjects.dlq(component), body, headers=out)
        return True
    ack = await nc.jetstream().publish(subjects.dlq(component), body, headers=out)
    return not ack.duplicate


# On a dead-letter copy: how many of the original's headers (other than its Nats-* ones)
# it does not carry. A count, not their names: a refused name may hold any character
# but a line break (no list of them reads back unambiguously), and the names of headers
# dropped for their size could fill the copy themselves.
DLQ_DROPPED_HEADER = "Flowscope-Dlq-Dropped-Headers"
# A header name nats-py sends: an RFC 7230 token. It refuses to publish a message with
# any other (BadHeaderError), while nats-server stores what a client writing the
# protocol itself sends (``Bad/Key: x``): copied, such a header made every copy of its
# message fail, the message redelivered for ever. (The enricher's own framing checks
# keys with it too.)
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _copied_headers(
    original: dict[str, str], own: dict[str, str], reason: str, body: bytes, limit: int
) -> dict[str, str]:
    """The headers of a dead-letter copy but its reason: the original's, then ``own``
    (the DLQ contract's: subject, message id).

    Left out: the original's ``Nats-*`` headers, those nats-py would refuse to send, and
    all the others when they leave no room under ``limit`` (the server's max_payload)
    for the contract's headers — the whole reason, and the original body's length should
    the body be cut: an original may take nearly all of max_payload with its headers,
    which its copy could not keep and stay under the limit (a larger message makes the
    server close the connection, and the message came back after each restart).
    """
    copyable = {k: v for k, v in original.items() if not k.lower().startswith("nats-")}
    out = {k: v for k, v in copyable.items() if HEADER_NAME.fullmatch(k.strip())}
    widest = {
        subjects.DLQ_REASON_HEADER: reason,
        subjects.DLQ_TRUNCATED_HEADER: str(len(body)),
        DLQ_DROPPED_HEADER: str(len(copyable)),
    }
    if header_size({**out, **own, **widest}) > limit:
        out = {}
    if len(out) < len(copyable):
        own = {**own, DLQ_DROPPED_HEADER: str(len(copyable) - len(out))}
    return {**out, **own}


def _fit(headers: dict[str, str], body: bytes, reason: str, limit: int) -> bytes:
    """Add the reason to ``headers`` and return the body, both cut so that the copy fits
    the server's ``max_payload`` (``limit``), which counts headers and body together: a
    larger message makes the server close the connection (nats-py checks the body
    alone). The reason is shortened first; a body that still does not fit (an original
    within a few hundred bytes of the limit) is cut, its length in a header."""
    room = limit - len(body) - header_size({**headers, subjects.DLQ_REASON_HEADER: ""})
    text = reason.encode()[: max(room, 0)].decode(errors="ignore")
    headers[subjects.DLQ_REASON_HEADER] = text
    if room >= 0:
        return body
    headers[subjects.DLQ_TRUNCATED_HEADER] = str(len(body))
    return body[: max(0, limit - header_size(headers))]


def header_size(headers: dict[str, str]) -> int:
    """Bytes nats-py writes for ``headers`` (``NATS/1.0``, a line each, a blank line)."""
    lines = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return len(b"NATS/1.0\r\n") + lines + 2
