"""The NATS helper against real nats-servers: auth, TLS, streams, DLQ, disconnect metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from flowscope.core import messaging, subjects
from flowscope.core.errors import ConnectionLostError, StartupError
from flowscope.core.messaging import NatsSettings
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from tests.support import nats_jwt, nats_server


@pytest.fixture
def fresh_server() -> Iterator[nats_server.NatsServer]:
    server = nats_server.start()
    yield server
    server.close()


async def test_streams_created_idempotently_with_retention(fresh_server: Any) -> None:
    settings = NatsSettings(url=fresh_server.url, stream_max_age=3600, stream_max_bytes=1 << 20)
    nc = await messaging.connect(settings, "test", CollectorRegistry())
    js = nc.jetstream()
    await messaging.ensure_streams(js, settings)
    await messaging.ensure_streams(js, settings)  # again: no error
    info = await js.stream_info(subjects.STREAM_RAW)
    assert info.config.subjects == [subjects.RAW_ALL]
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 1 << 20
    # a changed retention updates the existing stream
    wider = NatsSettings(url=fresh_server.url, stream_max_age=7200, stream_max_bytes=2 << 20)
    await messaging.ensure_streams(js, wider)
    info = await js.stream_info(subjects.STREAM_FLOWS)
    assert (info.config.max_age, info.config.max_bytes) == (7200, 2 << 20)
    ack = await js.publish(subjects.raw_flows("n1"), b"{}\n")
    assert ack.stream == subjects.STREAM_RAW
    assert info.config.allow_atomic is True  # atomic batch publish allowed
    await nc.close()


async def test_existing_streams_get_atomic_batches_allowed(fresh_server: Any) -> None:
    """Streams created before flowscope allowed atomic batches are updated in place."""
    settings = NatsSettings(url=fresh_server.url)
    nc = await messaging.connect(settings, "test", CollectorRegistry())
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=subjects.STREAM_FLOWS, subjects=[subjects.FLOWS_ALL]))
    await js.publish(subjects.flows("a", "b"), b"{}\n")
    await messaging.ensure_streams(js, settings)
    info = await js.stream_info(subjects.STREAM_FLOWS)
    assert info.config.allow_atomic is True
    assert info.state.messages == 1  # kept
    await nc.close()


async def test_dead_letter_keeps_body_and_reason(fresh_server: Any) -> None:
    settings = NatsSettings(url=fresh_server.url)
    nc = await messaging.connect(settings, "test", CollectorRegistry())
    sub = await nc.subscribe(subjects.dlq("enricher"))
    await messaging.dead_letter(
        nc, "enricher", "flowscope.raw.flows.n1", {"Flowscope-Schema": "x/9"}, b"\xffjunk", "bad"
    )
    msg = await sub.next_msg(timeout=10)
    assert msg.data == b"\xffjunk"
    assert msg.headers[subjects.DLQ_REASON_HEADER] == "bad"
    assert msg.headers[subjects.DLQ_SUBJECT_HEADER] == "flowscope.raw.flows.n1"
    assert msg.headers["Flowscope-Schema"] == "x/9"
    await nc.close()


async def test_dead_letter_with_msg_id_is_stored_once(fresh_server: Any) -> None:
    """Copies of one bad message from several consumers (each exporter sink has its own)
    land in the DLQ stream once, also after the server's default two-minute window."""
    settings = NatsSettings(url=fresh_server.url, stream_max_age=3600)
    nc = await messaging.connect(settings, "test", CollectorRegistry())
    js = nc.jetstream()
    await messaging.ensure_streams(js, settings)
    info = await js.stream_info(subjects.STREAM_DLQ)
    assert info.config.duplicate_window == 3600  # the whole retention
    flows = await js.stream_info(subjects.STREAM_FLOWS)
    assert flows.config.duplicate_window == 120  # the server's default, unchanged
    copies = [
        await messaging.dead_letter(
            nc, "exporter", "flowscope.flows.a.b", None, b"{bad", f"bad ({sink})", "FLOWS:7"
        )
        for sink in ("stdout", "otlp", "elasticsearch")
    ]
    assert copies == [True, False, False]
    other = await messaging.dead_letter(nc, "exporter", "s", None, b"x", "bad", "FLOWS:8")
    assert other is True
    info = await js.stream_info(subjects.STREAM_DLQ)
    assert info.state.messages == 2
    stored = await js.get_msg(subjects.STREAM_DLQ, 1)
    assert stored.data == b"{bad"
    assert stored.headers is not None
    assert stored.headers[subjects.DLQ_REASON_HEADER] == "bad (stdout)"
    await nc.close()


async def test_user_password_and_token_auth() -> None:
    server = nats_server.start(extra=["--user", "flow", "--pass", "s3cret"])
    try:
        ok = NatsSettings(url=server.url, user="flow", password="s3cret")
        nc = await messaging.connect(ok, "test", CollectorRegistry(), retry=False)
        assert nc.is_connected
        await nc.close()
        bad = NatsSettings(url=server.url, user="flow", password="wrong", connect_timeout=1)
        with pytest.raises(StartupError, match="cannot connect"):
            await messaging.connect(bad, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()
    server = nats_server.start(extra=["--auth", "tok3n"])
    try:
        nc = await messaging.connect(
            NatsSettings(url=server.url, token="tok3n"), "test", CollectorRegistry(), retry=False
        )
        assert nc.is_connected
        await nc.close()
    finally:
        server.close()


async def test_a_first_connection_that_fails_names_its_cause_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: "nats: no servers available for connection" (the cause only in two bare
    "NATS error" warnings), and 5 s (the reconnect wait) between the two attempts."""
    server = nats_server.start(extra=["--user", "flow", "--pass", "s3cret"])
    try:
        bad = NatsSettings(url=server.url, user="flow", password="wrong", reconnect_wait_max=30)
        with (
            caplog.at_level(logging.WARNING, logger="flowscope.nats"),
            pytest.raises(StartupError, match="Authorization Violation"),
        ):
            await asyncio.wait_for(
                messaging.connect(bad, "test", CollectorRegistry(), retry=False), 20
            )
        assert [r.getMessage() for r in caplog.records] == []
    finally:
        server.close()


async def test_retries_name_the_cause_and_wait_what_they_announce(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as unused:  # bound, never listening: connections refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        settings = NatsSettings(url=f"nats://127.0.0.1:{port}", reconnect_wait_max=30)
        with caplog.at_level(logging.WARNING, logger="flowscope.nats"):
            task = asyncio.ensure_future(messaging.connect(settings, "test", CollectorRegistry()))
            for _ in range(200):
                if len(caplog.records) >= 3:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    retries = [r for r in caplog.records if r.getMessage() == "NATS unreachable; retrying"]
    # 0.1 + 0.2 s announced; before, each attempt also slept the 30 s reconnect wait
    assert len(retries) >= 3, [r.getMessage() for r in caplog.records]
    assert all("Connect call failed" in r.error for r in retries)  # type: ignore[attr-defined]
    assert [r.retry_in for r in retries[:3]] == [0.1, 0.2, 0.4]  # type: ignore[attr-defined]
    assert all(r.getMessage() != "NATS error" for r in caplog.records)


async def test_creds_file_auth_in_operator_mode(tmp_path: Path) -> None:
    """A ``.creds`` file (user JWT + NKey seed) against a server that trusts only its
    operator's accounts: connects, publishes to JetStream; a user of an account the
    operator never signed is refused."""
    chain = nats_jwt.trust(tmp_path)
    server = nats_server.start(extra=["-c", str(chain.server_config)])
    try:
        settings = NatsSettings(url=server.url, creds_file=str(chain.creds_file))
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        js = nc.jetstream()
        await messaging.ensure_streams(js, settings)
        ack = await js.publish(subjects.raw_flows("node-a"), b"{}")
        assert ack.stream == subjects.STREAM_RAW
        await nc.close()
        stranger = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_ACCOUNT)
        bad = NatsSettings(
            url=server.url,
            creds_file=str(chain.user_creds(tmp_path / "stranger.creds", stranger)),
            connect_timeout=1,
        )
        with pytest.raises(StartupError, match="cannot connect"):
            await messaging.connect(bad, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()


def _make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=flowscope-test-ca")  # fmt: skip
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", ext.name)  # fmt: skip


async def test_mutual_tls(tmp_path: Path) -> None:
    _make_certs(tmp_path)
    server = nats_server.start(
        extra=["--tlsverify", "--tlscert", str(tmp_path / "server.pem"),
               "--tlskey", str(tmp_path / "server.key"), "--tlscacert", str(tmp_path / "ca.pem")]
    )  # fmt: skip
    try:
        settings = NatsSettings(
            url=f"tls://127.0.0.1:{server.port}",
            tls_ca=str(tmp_path / "ca.pem"),
            tls_cert=str(tmp_path / "client.pem"),
            tls_key=str(tmp_path / "client.key"),
        )
        nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
        sub = await nc.subscribe("t")
        await nc.publish("t", b"over tls")
        assert (await sub.next_msg(timeout=10)).data == b"over tls"
        await nc.close()
        no_client_cert = NatsSettings(url=settings.url, tls_ca=settings.tls_ca, connect_timeout=1)
        with pytest.raises(StartupError):
            await messaging.connect(no_client_cert, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()


async def test_disconnect_is_counted_and_reconnect_resumes(tmp_path: Path) -> None:
    server = nats_server.start(store_dir=str(tmp_path / "a"))
    port = server.port
    registry = CollectorRegistry()
    settings = NatsSettings(url=server.url, reconnect_wait_max=0.2)
    nc = await messaging.connect(settings, "test", registry)
    server.stop()
    for _ in range(100):
        if registry.get_sample_value("flowscope_nats_disconnects_total"):
            break
        await asyncio.sleep(0.05)
    assert registry.get_sample_value("flowscope_nats_disconnects_total") == 1
    assert registry.get_sample_value("flowscope_nats_connected") == 0
    server2 = nats_server.start(port=port, store_dir=str(tmp_path / "b"))
    try:
        for _ in range(200):
            if nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert nc.is_connected
        assert registry.get_sample_value("flowscope_nats_reconnects_total") == 1
        sub = await nc.subscribe("again")
        await nc.publish("again", b"x")
        assert (await sub.next_msg(timeout=10)).data == b"x"
    finally:
        await nc.close()
        server2.close()
        server.close()


async def test_close_flushes_what_is_buffered_and_is_quiet(
    fresh_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flowscope.nats")
    settings = NatsSettings(url=fresh_server.url)
    registry = CollectorRegistry()
    nc = await messaging.connect(settings, "test", registry)
    reader = await messaging.connect(settings, "reader", CollectorRegistry())
    sub = await reader.subscribe("last")
    await messaging.flush(reader)  # the server has the SUB before nc publishes
    await nc.publish("last", b"words")  # buffered by nats-py: close must send it
    await messaging.close(nc)
    assert nc.is_closed
    assert (await sub.next_msg(timeout=10)).data == b"words"
    await messaging.close(nc)  # closed already: nothing to do, nothing logged
    await messaging.close(reader)
    # closed on purpose: no warning, and not counted as a disconnection (the log may
    # hold other tests' clients' lines: this client's own counters are the test)
    assert not [r for r in caplog.records if r.getMessage() == "NATS closed without a final flush"]
    assert registry.get_sample_value("flowscope_nats_disconnects_total") == 0
    assert any(r.getMessage() == "NATS connection closed" for r in caplog.records)
    assert registry.get_sample_value("flowscope_nats_connected") == 0


def traced_commands(log_path: str) -> list[tuple[str, str]]:
    """(operation, first argument) of each command a ``-V`` server's log traced as read."""
    return re.findall(r"<<- \[(\w+)(?: (\S+))?", Path(log_path).read_text())


async def test_flush_returns_after_the_server_handled_what_was_buffered() -> None:
    """nats-py's own flush writes its PING ahead of the commands it still buffers, so its
    PONG confirms none of them (CI lost a message published right after another client
    subscribed and flushed). The server's trace (``-V``: each command as it reads it)
    shows ``messaging.flush``'s last PING after the SUB and the PUB made before it."""
    server = nats_server.start(extra=["-V"])
    try:
        nc = await messaging.connect(NatsSettings(url=server.url), "test", CollectorRegistry())
        await nc.subscribe("traced.sub")
        await nc.publish("traced.pub", b"x")
        await messaging.flush(nc)
        await nc.close()
        server.stop()
        read = traced_commands(server.log_path)
    finally:
        server.close()
    assert ("SUB", "traced.sub") in read and ("PUB", "traced.pub") in read
    last_ping = max(i for i, (op, _) in enumerate(read) if op == "PING")
    assert last_ping > read.index(("SUB", "traced.sub"))
    assert last_ping > read.index(("PUB", "traced.pub"))


async def test_what_another_client_publishes_after_a_flushed_subscribe_arrives(
    fresh_server: Any,
) -> None:
    """The trace test's race, end to end: subscribe, ``messaging.flush``, and a message
    another client publishes next arrives, each of 300 times (subscribe and nats-py's
    ``flush`` alone lost 66 of 3 000 here)."""
    settings = NatsSettings(url=fresh_server.url)
    reader = await messaging.connect(settings, "reader", CollectorRegistry())
    writer = await messaging.connect(settings, "writer", CollectorRegistry())
    missed = []
    for i in range(300):
        sub = await reader.subscribe(f"race.{i}")
        await messaging.flush(reader)
        await writer.publish(f"race.{i}", b"x")
        try:
            await sub.next_msg(timeout=10)
        except nats.errors.TimeoutError:
            missed.append(i)
        await sub.unsubscribe()
    await messaging.close(writer)
    await messaging.close(reader)
    assert missed == []


async def test_close_after_the_server_went_away_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service's stop goes on when NATS is gone with commands still buffered for it
    (nats-py's own close raises ConnectionResetError then: `flowscope up`'s exporter
    died with that traceback on Ctrl-C, when the server had stopped first)."""
    server = nats_server.start()
    try:
        nc = await messaging.connect(NatsSettings(url=server.url), "test", CollectorRegistry())
        server.stop()
        for _ in range(100):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.05)
        await nc.publish("lost", b"x" * 100)  # buffered while reconnecting
        await messaging.close(nc, flush_timeout=1)
        assert nc.is_closed
        warned = [
            r for r in caplog.records if r.getMessage() == "NATS closed without a final flush"
        ]
        assert len(warned) == 1
        assert getattr(warned[0], "error", "")
    finally:
        server.close()


async def test_a_close_by_the_server_is_a_disconnection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nats-py closes the client itself on a server's -ERR (here a command over the
    server's max_control_line): lost, not a service stopping — counted and warned."""
    conf = tmp_path / "nats.conf"
    conf.write_text("max_control_line: 256\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    registry = CollectorRegistry()
    try:
        nc = await messaging.connect(NatsSettings(url=server.url), "test", registry)
        await nc.publish("a" * 400, b"x")
        for _ in range(100):  # the disconnection callback runs once the close is done
            if registry.get_sample_value("flowscope_nats_disconnects_total"):
                break
            await asyncio.sleep(0.05)
        assert nc.is_closed
        assert registry.get_sample_value("flowscope_nats_disconnects_total") == 1
        assert any(r.getMessage() == "NATS disconnected" for r in caplog.records)
    finally:
        server.close()


async def test_until_lost_raises_when_nats_py_closes_the_client(tmp_path: Path) -> None:
    """A client nats-py closed by itself never reconnects: ``until_lost`` names it, so the
    service stops (exit 1) instead of running on with a dead connection."""
    conf = tmp_path / "nats.conf"
    conf.write_text("max_control_line: 256\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    try:
        nc = await messaging.connect(NatsSettings(url=server.url), "test", CollectorRegistry())
        watch = asyncio.create_task(messaging.until_lost(nc, asyncio.Event()))
        await nc.publish("a" * 400, b"x")  # the server answers -ERR and closes
        with pytest.raises(ConnectionLostError, match="NATS connection lost for good"):
            await asyncio.wait_for(watch, 10)
        assert nc.is_closed
    finally:
        server.close()


async def test_until_lost_returns_when_stopping_or_closed_by_the_service(
    fresh_server: Any,
) -> None:
    settings = NatsSettings(url=fresh_server.url)
    nc = await messaging.connect(settings, "test", CollectorRegistry())
    stopping = asyncio.Event()
    watch = asyncio.create_task(messaging.until_lost(nc, stopping))
    await asyncio.sleep(0.05)
    assert not watch.done()  # connected, not stopping: waits
    stopping.set()
    await asyncio.wait_for(watch, 5)  # returns, no error
    other = await messaging.connect(settings, "test", CollectorRegistry())
    watch = asyncio.create_task(messaging.until_lost(other, asyncio.Event()))
    await messaging.close(other)  # the service's own close is not a loss
    await asyncio.sleep(0.1)
    assert not watch.done()
    watch.cancel()
    await messaging.close(nc)


def test_stream_config_is_bounded() -> None:
    cfg: StreamConfig = messaging.stream_config(subjects.STREAMS[0], NatsSettings())
    assert cfg.max_age and cfg.max_bytes and cfg.max_bytes > 0
