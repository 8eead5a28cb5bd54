"""NATS security against real nats-servers: TLS once configured is TLS or no
connection (nothing, above all no password, is sent to a server that does not offer
it), handshake-first TLS, and URLs shown without their credentials."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowscope.core import config, messaging
from flowscope.core.errors import ConfigError, StartupError
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.support import nats_jwt, nats_server
from tests.support.otlp_receivers import TlsFiles, make_tls

SECRET = "S3cretPW"
AUTH = ["--user", "alice", "--pass", SECRET]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, TlsFiles]:
    return make_tls(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def plain_server() -> Iterator[nats_server.NatsServer]:
    """A server with a password and no TLS, tracing every command it reads (``-V``)."""
    server = nats_server.start(extra=[*AUTH, "-V"])
    yield server
    server.close()


def tls_server(
    server: TlsFiles, port: int = -1, store: str | None = None
) -> nats_server.NatsServer:
    return nats_server.start(
        port=port, store_dir=store,
        extra=[*AUTH, "--tls", "--tlscert", str(server.cert), "--tlskey", str(server.key)],
    )  # fmt: skip


def received_connect(server: nats_server.NatsServer) -> bool:
    return re.search(r"<<- \[CONNECT", Path(server.log_path).read_text()) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["tls", "nats"])
@pytest.mark.parametrize("retry", [False, True])
async def test_tls_configured_refuses_a_server_that_does_not_offer_it(
    plain_server: nats_server.NatsServer,
    pki: tuple[TlsFiles, TlsFiles],
    scheme: str,
    retry: bool,
) -> None:
    """A ``tls://`` URL or a CA asks for TLS: a server whose INFO does not (one without
    TLS, or a man in the middle that removed the flag) gets no CONNECT, and start-up
    stops with one line saying why (not retried: the server answered)."""
    settings = NatsSettings(
        url=f"{scheme}://127.0.0.1:{plain_server.port}", user="alice", password=SECRET,
        tls_ca=str(pki[0].ca), connect_timeout=2,
    )  # fmt: skip
    async with asyncio.timeout(20):  # the old client connected, or retried for ever
        with pytest.raises(StartupError, match="did not offer TLS") as e:
            await messaging.connect(settings, "test", CollectorRegistry(), retry=retry)
    assert "\n" not in str(e.value)
    assert not received_connect(plain_server)


async def test_a_reconnection_refuses_a_server_without_tls(
    pki: tuple[TlsFiles, TlsFiles], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same check on every reconnection: a plaintext server on the TLS server's
    address never receives the password; the client keeps trying."""
    caplog.set_level(logging.WARNING, logger="flowscope.nats")
    port = _free_port()
    secure = tls_server(pki[0], port, str(tmp_path / "tls"))
    settings = NatsSettings(
        url=f"tls://127.0.0.1:{port}", user="alice", password=SECRET, tls_ca=str(pki[0].ca),
        reconnect_wait_max=0.2, connect_timeout=2,
    )  # fmt: skip
    registry = CollectorRegistry()
    nc = await messaging.connect(settings, "test", registry, retry=False)
    secure.close()
    plain = nats_server.start(port=port, store_dir=str(tmp_path / "plain"), extra=[*AUTH, "-V"])
    try:
        for _ in range(150):  # the client retries every 0.2 s
            if any("did not offer TLS" in str(getattr(r, "error", "")) for r in caplog.records):
                break
            await asyncio.sleep(0.1)
        assert any("did not offer TLS" in str(getattr(r, "error", "")) for r in caplog.records)
        assert not received_connect(plain)
        assert not nc.is_connected
    finally:
        await messaging.close(nc)
        plain.close()


async def test_handshake_first_tls(pki: tuple[TlsFiles, TlsFiles], tmp_path: Path) -> None:
    """``tls_handshake_first`` reaches a server configured with ``handshake_first``
    (which waits for the client's TLS handshake before its INFO)."""
    server_files = pki[0]
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'tls {{\n  cert_file: "{server_files.cert}"\n  key_file: "{server_files.key}"\n'
        "  handshake_first: true\n}\n"
    )
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    try:
        settings = NatsSettings(
            url=f"nats://127.0.0.1:{server.port}", tls_ca=str(server_files.ca),
            tls_handshake_first=True, connect_timeout=2,
        )  # fmt: skip
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        sub = await nc.subscribe("t")
        await nc.publish("t", b"handshake first")
        assert (await sub.next_msg(timeout=10)).data == b"handshake first"
        await messaging.close(nc)
    finally:
        server.close()


def _no_secret_in(records: list[logging.LogRecord]) -> None:
    for record in records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(vars(record))


async def test_url_credentials_stay_out_of_logs_and_errors(
    plain_server: nats_server.NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowscope.nats")
    url = f"nats://alice:{SECRET}@127.0.0.1:{plain_server.port}"
    nc = await messaging.connect(NatsSettings(url=url), "test", CollectorRegistry())
    await messaging.close(nc)
    connected = [r for r in caplog.records if r.getMessage() == "NATS connected"]
    assert [getattr(r, "url", None) for r in connected] == [f"nats://127.0.0.1:{plain_server.port}"]
    closed = NatsSettings(
        url=f"nats://alice:{SECRET}@127.0.0.1:{_free_port()}", connect_timeout=1,
        reconnect_wait_max=0.1,
    )  # fmt: skip
    with pytest.raises(TimeoutError):  # retries, logging each attempt
        async with asyncio.timeout(2):
            await messaging.connect(closed, "test", CollectorRegistry())
    assert any(r.getMessage() == "NATS unreachable; retrying" for r in caplog.records)
    with pytest.raises(StartupError) as e:
        await messaging.connect(closed, "test", CollectorRegistry(), retry=False)
    assert SECRET not in str(e.value) and "127.0.0.1" in str(e.value)
    _no_secret_in(caplog.records)


def _flowscope(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowscope.cli", command],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_observe_error_line_shows_no_credentials() -> None:
    port = _free_port()
    r = _flowscope(
        "observe",
        {"FLOWSCOPE_NATS_URL": f"nats://127.0.0.1:{port}", "FLOWSCOPE_NATS_USER": "alice",
         "FLOWSCOPE_NATS_PASSWORD": SECRET, "FLOWSCOPE_NATS_CONNECT_TIMEOUT": "1"},
    )  # fmt: skip
    assert r.returncode == 2
    assert SECRET not in r.stderr
    assert f"cannot connect to nats://127.0.0.1:{port}" in r.stderr.splitlines()[-1]


def test_credentials_in_the_nats_url_stop_start_up_unused(
    plain_server: nats_server.NatsServer,
) -> None:
    """A password in the URL would be in ``ps`` (a flag) and is refused as its own flag
    is: one line naming the setting and the variables to use, exit 2, nothing sent."""
    url = f"nats://alice:{SECRET}@127.0.0.1:{plain_server.port}"
    r = subprocess.run(
        [sys.executable, "-m", "flowscope.cli", "exporter", "--nats-url", url],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    line = r.stderr.splitlines()[-1]
    assert "--nats-url" in line and "FLOWSCOPE_NATS_PASSWORD" in line
    assert SECRET not in r.stderr
    assert not received_connect(plain_server)


def test_a_creds_file_without_its_jwt_stops_start_up(tmp_path: Path) -> None:
    """nats-py loops for ever past the end of a creds file without a JWT section (full
    CPU, deaf to SIGTERM): the file is checked at start-up, one line and exit 2."""
    creds = nats_jwt.trust(tmp_path).creds_file
    text = creds.read_text()
    seed = text.split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
    creds.write_text(text[text.index("****") :])
    r = _flowscope(
        "exporter",
        {"FLOWSCOPE_NATS_CREDS_FILE": str(creds), "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
    )
    assert r.returncode == 2, r.stderr
    assert "FLOWSCOPE_NATS_CREDS_FILE" in r.stderr.splitlines()[-1]
    assert seed not in r.stderr


def test_a_service_stops_with_exit_2_when_its_server_does_not_offer_tls(
    plain_server: nats_server.NatsServer, pki: tuple[TlsFiles, TlsFiles]
) -> None:
    r = _flowscope(
        "exporter",
        {"FLOWSCOPE_NATS_URL": f"tls://127.0.0.1:{plain_server.port}",
         "FLOWSCOPE_NATS_USER": "alice", "FLOWSCOPE_NATS_PASSWORD": SECRET,
         "FLOWSCOPE_NATS_TLS_CA": str(pki[0].ca), "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "did not offer TLS" in r.stderr.splitlines()[-1]
    assert not received_connect(plain_server)


async def test_tls_server_name(pki: tuple[TlsFiles, TlsFiles], tmp_path: Path) -> None:
    """The certificate is checked against ``tls_server_name`` instead of the URL's host
    (the test server's certificate names 127.0.0.1 and localhost)."""
    server = tls_server(pki[0], store=str(tmp_path / "js"))
    try:
        settings = NatsSettings(
            url=f"nats://127.0.0.1:{server.port}", user="alice", password=SECRET,
            tls_ca=str(pki[0].ca), tls_server_name="localhost", connect_timeout=2,
        )  # fmt: skip
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        await messaging.close(nc)
        other = dataclasses.replace(settings, tls_server_name="elsewhere.example")
        with pytest.raises(StartupError, match=r"elsewhere\.example"):
            await messaging.connect(other, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()


async def test_nkey_seed_file(tmp_path: Path) -> None:
    """A server that lists a user's public NKey: the seed file signs its nonce; another
    user's seed is refused; a seed file with a creds file is one configuration error."""
    user = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    stranger = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    for name, key in (("user.nk", user), ("stranger.nk", stranger)):
        (tmp_path / name).write_bytes(key.seed)
    conf = tmp_path / "nats.conf"
    conf.write_text(f"authorization {{\n  users = [ {{ nkey: {user.public_key.decode()} }} ]\n}}\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    try:
        settings = NatsSettings(url=server.url, nkey_seed_file=str(tmp_path / "user.nk"))
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        assert nc.is_connected
        await messaging.close(nc)
        refused = NatsSettings(
            url=server.url, nkey_seed_file=str(tmp_path / "stranger.nk"), connect_timeout=1
        )
        with pytest.raises(StartupError, match="cannot connect"):
            await messaging.connect(refused, "test", CollectorRegistry(), retry=False)
        both = dataclasses.replace(settings, creds_file=str(tmp_path / "user.nk"))
        with pytest.raises(ConfigError, match="FLOWSCOPE_NATS_CREDS_FILE"):
            await messaging.connect(both, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()


async def _retried_until_given_up(settings: NatsSettings, server: nats_server.NatsServer) -> None:
    """Connect to ``server`` until the test gives up (2 s: the client retries), then stop it."""
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):
                await messaging.connect(settings, "test", CollectorRegistry())
    finally:
        server.close()


def _retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log's retry lines: at least one."""
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries
    return retries


@pytest.mark.parametrize("mismatch", ["CA", "server name"])
async def test_a_certificate_not_verified_at_start_up_is_retried_saying_so(
    pki: tuple[TlsFiles, TlsFiles],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mismatch: str,
) -> None:
    """The server answered: a wrong CA or server name is not "unreachable". It is
    retried (a Secret may be rotated in place), each line saying that the certificate
    was not verified, why, and which settings decide it."""
    caplog.set_level(logging.WARNING, logger="flowscope.nats")
    server = tls_server(pki[0], store=str(tmp_path / "js"))
    other_ca = make_tls(tmp_path)[0].ca
    settings = NatsSettings(
        url=f"tls://127.0.0.1:{server.port}", user="alice", password=SECRET,
        tls_ca=str(other_ca if mismatch == "CA" else pki[0].ca),
        tls_server_name="" if mismatch == "CA" else "elsewhere.example",
        connect_timeout=2, reconnect_wait_max=0.1,
    )  # fmt: skip
    await _retried_until_given_up(settings, server)
    for record in _retries(caplog):
        assert record.getMessage() == "NATS server's TLS certificate not verified; retrying"
        assert "certificate verify failed" in getattr(record, "error", "")
        assert "FLOWSCOPE_NATS_TLS_CA" in getattr(record, "settings", "")
        assert "FLOWSCOPE_NATS_TLS_SERVER_NAME" in getattr(record, "settings", "")


@pytest.mark.parametrize("auth", ["user/password", "token"])
async def test_credentials_from_a_secret_file_with_a_final_newline_connect(auth: str) -> None:
    """Each value of a Secret made with ``kubectl create secret --from-file`` ends in its
    file's newline when ``secretKeyRef`` passes it as a variable; before, it was sent as
    part of the credential and the server refused it ("Authorization Violation")."""
    from flowscope.exporter.settings import Settings

    if auth == "token":
        extra, env = ["--auth", SECRET], {"FLOWSCOPE_NATS_TOKEN": f"{SECRET}\n"}
    else:
        extra = AUTH
        env = {"FLOWSCOPE_NATS_USER": "alice\n", "FLOWSCOPE_NATS_PASSWORD": f"{SECRET}\n"}
    server = nats_server.start(extra=extra)
    try:
        settings = config.load(Settings, {}, {"FLOWSCOPE_NATS_URL": server.url, **env}).nats
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        assert nc.is_connected
        await messaging.close(nc)
    finally:
        server.close()


def _nkey_server(tmp_path: Path, user: nats_jwt.nkeys.KeyPair) -> nats_server.NatsServer:
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{\n  users = [ {{ nkey: {user.public_key.decode()} }} ]\n}}\n")
    return nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])


@pytest.mark.parametrize(
    "refused",
    ["wrong password", "unknown user", "wrong token", "unknown NKey", "no credentials"],
)
async def test_credentials_refused_at_start_up_are_retried_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refused: str
) -> None:
    """The server answered: refused credentials are a Secret to fix, not a network. They
    are retried (a Secret may be rotated into place), each line saying so and naming the
    settings in use, never their values."""
    caplog.set_level(logging.WARNING, logger="flowscope.nats")
    stranger = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    (tmp_path / "stranger.nk").write_bytes(stranger.seed)
    if refused == "unknown NKey":
        server = _nkey_server(tmp_path, nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER))
    else:
        extra = ["--auth", SECRET] if refused == "wrong token" else AUTH
        server = nats_server.start(store_dir=str(tmp_path / "js"), extra=extra)
    credentials, names = {
        "wrong password": ({"user": "alice", "password": "Hunter2"}, "FLOWSCOPE_NATS_USER, "
                           "FLOWSCOPE_NATS_PASSWORD"),
        "unknown user": ({"user": "bob", "password": SECRET}, "FLOWSCOPE_NATS_USER, "
                         "FLOWSCOPE_NATS_PASSWORD"),
        "wrong token": ({"token": "Hunter2"}, "FLOWSCOPE_NATS_TOKEN"),
        "unknown NKey": ({"nkey_seed_file": str(tmp_path / "stranger.nk")},
                         "FLOWSCOPE_NATS_NKEY_SEED_FILE"),
        "no credentials": ({}, "none (no NATS credentials are set)"),
    }[refused]  # fmt: skip
    settings = NatsSettings(
        url=server.url, connect_timeout=2, reconnect_wait_max=0.1, **credentials
    )
    await _retried_until_given_up(settings, server)
    for record in _retries(caplog):
        assert record.getMessage() == "NATS server refused the credentials; retrying"
        assert "Authorization Violation" in getattr(record, "error", "")
        assert getattr(record, "settings", "") == names
    for record in caplog.records:
        assert "Hunter2" not in repr(vars(record)) and stranger.seed.decode() not in repr(
            vars(record)
        )


async def test_credentials_refused_after_a_server_restart_are_logged_as_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server restarted with another password refuses each reconnection: the client
    keeps trying, each warning saying the credentials were refused and by which
    settings, and reconnects once they are accepted again."""
    caplog.set_level(logging.INFO, logger="flowscope.nats")
    port = _free_port()
    server = nats_server.start(port=port, store_dir=str(tmp_path / "a"), extra=AUTH)
    settings = NatsSettings(
        url=server.url, user="alice", password=SECRET, connect_timeout=2,
        reconnect_wait_max=0.2,
    )  # fmt: skip
    nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
    server.close()
    other = ["--user", "alice", "--pass", "Changed1"]
    server = nats_server.start(port=port, store_dir=str(tmp_path / "b"), extra=other)
    try:
        refusals: list[logging.LogRecord] = []
        for _ in range(150):  # the client retries every 0.2 s
            refusals = [
                r for r in caplog.records if r.getMessage() == "NATS server refused the credentials"
            ]
            if len(refusals) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(refusals) >= 2, [r.getMessage() for r in caplog.records]
        assert all(
            getattr(r, "settings", "") == "FLOWSCOPE_NATS_USER, FLOWSCOPE_NATS_PASSWORD"
            for r in refusals
        )
        assert not nc.is_closed
        server.close()
        server = nats_server.start(port=port, store_dir=str(tmp_path / "c"), extra=AUTH)
        for _ in range(150):
            if nc.is_connected:
                break
            await asyncio.sleep(0.1)
        assert nc.is_connected
        _no_secret_in(caplog.records)
    finally:
        await messaging.close(nc)
        server.close()


async def test_an_nkey_seed_file_made_malformed_before_connecting_is_retried_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file passed the start-up check, then broke (a bad rotation) before the first
    connection: no server was at fault. Each attempt reads it anew, its retry line naming
    the setting, not what the file holds; the good seed put back connects."""
    caplog.set_level(logging.WARNING, logger="flowscope.nats")
    user = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    seed = tmp_path / "user.nk"
    seed.write_text("Hunter2\n")
    server = _nkey_server(tmp_path, user)
    settings = NatsSettings(
        url=server.url, nkey_seed_file=str(seed), connect_timeout=2, reconnect_wait_max=0.1
    )
    try:
        task = asyncio.ensure_future(messaging.connect(settings, "test", CollectorRegistry()))
        for _ in range(100):
            if any("retrying" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        seed.write_bytes(user.seed)
        async with asyncio.timeout(20):
            nc = await task
        await messaging.close(nc)
    finally:
        server.close()
    for record in _retries(caplog):
        assert record.getMessage() == "NATS credentials file not usable; retrying"
        assert "does not hold an NKey seed" in getattr(record, "error", "")
        assert "FLOWSCOPE_NATS_NKEY_SEED_FILE" in getattr(record, "settings", "")
        assert "Hunter2" not in repr(vars(record))
