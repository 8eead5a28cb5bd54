"""An NKey seed file must hold a *user* seed (SU...): an account or operator seed signs
the server's nonce all the same, under a public key no server lists as a user, so
without a check the service would retry a refusal for ever instead of stopping at
start-up with one line naming the setting (DESIGN.md, "Bad input")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flowscope.core import messaging
from flowscope.core.errors import StartupError
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

from tests.support import nats_jwt, nats_server

nkeys = nats_jwt.nkeys
NOT_USERS = {"account": nkeys.PREFIX_BYTE_ACCOUNT, "operator": nkeys.PREFIX_BYTE_OPERATOR}


def _nkey_server(tmp_path: Path, user: nkeys.KeyPair) -> nats_server.NatsServer:
    """A server that lists ``user``'s public NKey (no JWT)."""
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{\n  users = [ {{ nkey: {user.public_key.decode()} }} ]\n}}\n")
    return nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])


@pytest.mark.parametrize("kind", list(NOT_USERS))
def test_a_seed_file_without_a_user_seed_stops_start_up_naming_the_setting(
    tmp_path: Path, kind: str
) -> None:
    seed = nats_jwt.keypair(NOT_USERS[kind]).seed
    path = tmp_path / f"{kind}.nk"
    path.write_bytes(seed + b"\n")
    server = _nkey_server(tmp_path, nats_jwt.keypair(nkeys.PREFIX_BYTE_USER))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "flowscope.cli", "exporter"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**os.environ, "FLOWSCOPE_NATS_URL": server.url,
                 "FLOWSCOPE_NATS_NKEY_SEED_FILE": str(path), "FLOWSCOPE_SINKS": "stdout",
                 "FLOWSCOPE_HTTP_ADDRESS": "127.0.0.1:0"},
        )  # fmt: skip
    finally:
        server.close()
    assert r.returncode == 2, r.stderr
    line = r.stderr.splitlines()[-1]
    assert "FLOWSCOPE_NATS_NKEY_SEED_FILE" in line and "not a user's" in line, line
    assert seed.decode() not in r.stderr


async def test_each_connection_checks_the_kind_of_seed(tmp_path: Path) -> None:
    """Checked at each connection as at start-up (an account seed rotated in under a
    running service): the attempt fails on the file, naming the setting, not as
    credentials the server refused."""
    account = nats_jwt.keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    path = tmp_path / "user.nk"
    path.write_bytes(account.seed)
    server = _nkey_server(tmp_path, nats_jwt.keypair(nkeys.PREFIX_BYTE_USER))
    settings = NatsSettings(url=server.url, nkey_seed_file=str(path), connect_timeout=2)
    try:
        with pytest.raises(StartupError) as e:
            await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
    finally:
        server.close()
    assert "FLOWSCOPE_NATS_NKEY_SEED_FILE" in str(e.value) and "not a user's" in str(e.value)
    assert account.seed.decode() not in str(e.value)
