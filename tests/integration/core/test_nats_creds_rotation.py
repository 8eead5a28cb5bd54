"""A creds file replaced under a running service, against a real operator-mode
nats-server: nats-py reads the file again at each reconnection, and looped for ever
(full CPU, deaf to SIGTERM) on one without a JWT, such as a bad rotation leaves.

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

# The child connects, logs each flowscope.nats record as "message | error", and closes
# its connection on SIGTERM.
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
        url=sys.argv[1], creds_file=sys.argv[2], connect_timeout=2, reconnect_wait_max=0.2
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

    def __init__(self, url: str, creds: Path, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, url, str(creds)],
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
