"""A creds file or an NKey seed file replaced under a running service, against a real
nats-server: nats-py read the file again, unchecked, at each reconnection, and looped
for ever (full CPU, deaf to SIGTERM) on a creds file without a JWT, such as a bad
rotation leaves; on a malformed seed file its reconnection loop ended silently, the
client disconnected for good yet not closed, and a rotated seed was refused for ever.

The client runs in a child process, which the test can kill if it hangs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import nats_jwt, nats_server

# The child connects with the file (argv[2]) as the setting argv[3], logs each
# flowscope.nats record as "message | error", and closes its connection on SIGTERM.
CLIENT = """
import asyncio, logging, signal, sys
from flowscope.core import messaging
from flowscope.core.messaging import NatsSettings
from prometheus_client import CollectorRegistry

class Lines(logging.Handler):
    def emit(self, record):
        print(record.getMessage(), "|", getattr(record, "error", ""), flush=True)

log = logging.getLogger("flowscope.nats")
log.addHandler(Lines())
log.setLevel(logging.INFO)

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    settings = NatsSettings(
        url=sys.argv[1], connect_timeout=2, reconnect_wait_max=0.2, **{sys.argv[3]: sys.argv[2]}
    )
    nc = await messaging.connect(settings, "test", CollectorRegistry(), retry=False)
    await stop.wait()
    await messaging.close(nc)

asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """The child process and the lines it has logged."""

    def __init__(self, url: str, file: Path, log: Path, setting: str = "creds_file") -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, url, str(file), setting],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, text: str, after: int = 0) -> list[str]:
        """The lines from line ``after`` on that hold ``text``, once there is one."""
        for _ in range(300):  # 30 s at most: the client tries again every 0.2 s
            found = [line for line in self.lines()[after:] if text in line]
            if found or self.process.poll() is not None:
                return found
            time.sleep(0.1)
        return []


@pytest.fixture
def trust(tmp_path: Path) -> nats_jwt.Trust:
    return nats_jwt.trust(tmp_path)


@pytest.fixture
def client(trust: nats_jwt.Trust, tmp_path: Path) -> Iterator[tuple[Client, int]]:
    port = _free_port()
    server = _server(trust, port, tmp_path / "js1")
    client = Client(f"nats://127.0.0.1:{port}", trust.creds_file, tmp_path / "client.log")
    try:
        assert client.wait_for("NATS connected"), client.lines()
        server.close()
        yield client, port
    finally:
        if client.process.poll() is None:
            client.process.kill()
            client.process.wait()
        server.close()


def _server(trust: nats_jwt.Trust, port: int, store: Path) -> nats_server.NatsServer:
    return nats_server.start(
        port=port, store_dir=str(store), extra=["-c", str(trust.server_config)]
    )


def test_a_creds_file_broken_by_a_rotation_fails_reconnections_until_it_is_fixed(
    trust: nats_jwt.Trust, client: tuple[Client, int], tmp_path: Path
) -> None:
    """The file with its seed half only (the JWT section lost): each reconnection fails
    with a warning naming the setting, not what the file holds; once the file is good
    again the client reconnects, and SIGTERM stops it."""
    child, port = client
    good = trust.creds_file.read_text()
    seed = good.split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
    trust.creds_file.write_text(good[good.index("****") :])
    server = _server(trust, port, tmp_path / "js2")
    try:
        failed = child.wait_for("FLOWSCOPE_NATS_CREDS_FILE")
        assert failed and "NATS error" in failed[0], child.lines()
        assert not any(seed in line for line in child.lines())
        seen = len(child.lines())
        trust.creds_file.write_text(good)
        assert child.wait_for("NATS reconnected", after=seen), child.lines()
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(30) == 0
    finally:
        server.close()


def _nkey_server(user: nats_jwt.nkeys.KeyPair, port: int, store: Path) -> nats_server.NatsServer:
    conf = store.with_suffix(".conf")
    conf.write_text(f"authorization {{ users = [ {{ nkey: {user.public_key.decode()} }} ] }}\n")
    return nats_server.start(port=port, store_dir=str(store), extra=["-c", str(conf)])


@pytest.fixture
def seed_client(tmp_path: Path) -> Iterator[tuple[Client, int, nats_jwt.nkeys.KeyPair, Path]]:
    """A child connected with an NKey seed file to a server that lists its public key;
    the server is stopped before the test."""
    user = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    seed = tmp_path / "user.nk"
    seed.write_bytes(user.seed)
    port = _free_port()
    server = _nkey_server(user, port, tmp_path / "js1")
    url = f"nats://127.0.0.1:{port}"
    child = Client(url, seed, tmp_path / "client.log", "nkey_seed_file")
    try:
        assert child.wait_for("NATS connected"), child.lines()
        server.close()
        yield child, port, user, seed
    finally:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        server.close()


@pytest.mark.parametrize("damage", ["garbage", "emptied", "removed", "a directory"])
def test_an_nkey_seed_file_made_malformed_fails_reconnections_until_it_is_fixed(
    seed_client: tuple[Client, int, nats_jwt.nkeys.KeyPair, Path], tmp_path: Path, damage: str
) -> None:
    """Each reconnection reads the file anew: a bad one fails with a warning naming the
    setting, not what the file holds; once the good seed is back the client reconnects,
    and SIGTERM stops it."""
    child, port, user, seed = seed_client
    seed.unlink()
    if damage == "garbage":
        seed.write_text("Hunter2\n")
    elif damage == "emptied":
        seed.write_text("")
    elif damage == "a directory":
        seed.mkdir()
    server = _nkey_server(user, port, tmp_path / "js2")
    try:
        failed = child.wait_for("FLOWSCOPE_NATS_NKEY_SEED_FILE")
        assert failed and "NATS error" in failed[0], child.lines()
        assert not any("Hunter2" in line for line in child.lines())
        seen = len(child.lines())
        if seed.is_dir():
            seed.rmdir()
        elif seed.exists():
            seed.unlink()
        seed.write_bytes(user.seed)
        assert child.wait_for("NATS reconnected", after=seen), child.lines()
        assert not any(user.seed.decode() in line for line in child.lines())
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(30) == 0
    finally:
        server.close()


def test_a_rotated_nkey_seed_is_used_from_the_next_connection(
    seed_client: tuple[Client, int, nats_jwt.nkeys.KeyPair, Path], tmp_path: Path
) -> None:
    """Another user's seed in the file, and the server restarted listing that user only:
    the reconnection signs with the new seed and names its public key."""
    child, port, _, seed = seed_client
    rotated = nats_jwt.keypair(nats_jwt.nkeys.PREFIX_BYTE_USER)
    seed.write_bytes(rotated.seed)
    server = _nkey_server(rotated, port, tmp_path / "js2")
    try:
        assert child.wait_for("NATS reconnected"), child.lines()
        assert not any("refused" in line for line in child.lines())
    finally:
        server.close()
