"""NATS TLS files are checked at start-up like the sinks' (``flowscope.core.tls``): each
problem is one line naming the setting and the file, never a silently dropped key or a
pass-phrase prompt."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
from flowscope.core import messaging
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.support.otlp_receivers import TlsFiles, make_tls

CA = "FLOWSCOPE_NATS_TLS_CA / --nats-tls-ca"
CERT = "FLOWSCOPE_NATS_TLS_CERT / --nats-tls-cert"
KEY = "FLOWSCOPE_NATS_TLS_KEY / --nats-tls-key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("pki")
    _server, client = make_tls(directory)
    (directory / "garbage.pem").write_text("not a certificate\n")
    subprocess.run(
        ["openssl", "pkey", "-in", str(client.key), "-aes256", "-passout", "pass:pw",
         "-out", str(directory / "encrypted.key")],
        check=True, capture_output=True,
    )  # fmt: skip
    return client


def _problem(pki: TlsFiles, **files: str) -> ConfigError:
    paths = {k: str(pki.ca.parent / v) for k, v in files.items()}
    with pytest.raises(ConfigError) as e:
        messaging.tls_context(NatsSettings(**paths))
    assert "\n" not in str(e.value)
    return e.value


def test_key_without_certificate_is_refused(pki: TlsFiles) -> None:
    e = _problem(pki, tls_ca="ca.pem", tls_key="client.key")
    assert (e.setting, KEY in e.problem) == (CERT, True)
    e = _problem(pki, tls_key="client.key")  # no CA, nats:// URL: still not dropped
    assert e.setting == CERT


def test_certificate_without_key_is_refused(pki: TlsFiles) -> None:
    assert _problem(pki, tls_cert="client.pem").setting == KEY


@pytest.mark.parametrize(
    ("files", "setting", "named"),
    [
        ({"tls_ca": "garbage.pem"}, CA, "garbage.pem"),
        ({"tls_cert": "garbage.pem", "tls_key": "client.key"}, CERT, "garbage.pem"),
        ({"tls_cert": "client.pem", "tls_key": "server.key"}, KEY, "server.key"),
        ({"tls_cert": "client.pem", "tls_key": "encrypted.key"}, KEY, "encrypted.key"),
    ],
)
def test_a_bad_file_names_its_setting_and_file(
    pki: TlsFiles, files: dict[str, str], setting: str, named: str
) -> None:
    e = _problem(pki, **files)
    assert e.setting == setting
    assert named in e.problem


def test_an_encrypted_key_does_not_prompt_on_a_terminal(pki: TlsFiles) -> None:
    """OpenSSL asks a terminal for the pass phrase (and start-up blocks) unless given a
    callback: on a terminal, the key is refused at once instead."""
    d = pki.ca.parent
    code = (
        "from flowscope.core import messaging as m\n"
        "from flowscope.core.errors import ConfigError\n"
        f"s = m.NatsSettings(tls_cert={str(d / 'client.pem')!r}, "
        f"tls_key={str(d / 'encrypted.key')!r})\n"
        "try:\n    m.tls_context(s)\nexcept ConfigError as e:\n    print('REFUSED', e.setting)\n"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session whose terminal is the pty
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = b""
    deadline = time.monotonic() + 30
    while b"pass phrase" not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child exited, its output is all read
                break
            if not chunk:
                break
            out += chunk
    if os.waitpid(pid, os.WNOHANG)[0] == 0:  # still running: blocked at the prompt
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    os.close(fd)
    assert b"pass phrase" not in out
    assert f"REFUSED {KEY}".encode() in out


def test_handshake_first_enables_tls(pki: TlsFiles) -> None:
    settings = NatsSettings(tls_handshake_first=True)
    opts = messaging.connect_options(
        settings, "t", messaging.NatsMetrics.create(CollectorRegistry())
    )
    assert opts["tls"] is not None and opts["tls_handshake_first"] is True
    plain = messaging.connect_options(
        NatsSettings(), "t", messaging.NatsMetrics.create(CollectorRegistry())
    )
    assert "tls" not in plain and "tls_handshake_first" not in plain


def test_mutual_tls_files_load(pki: TlsFiles) -> None:
    d = pki.ca.parent
    settings = NatsSettings(
        tls_ca=str(d / "ca.pem"), tls_cert=str(d / "client.pem"), tls_key=str(d / "client.key")
    )
    assert messaging.tls_context(settings) is not None
