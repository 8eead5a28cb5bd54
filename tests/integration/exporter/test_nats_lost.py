"""A connection nats-py closes for good stops the exporter with a reason (exit 1)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.integration.exporter.harness import Exporter
from tests.support import nats_server
from tests.support.waiting import eventually


async def test_exporter_exits_when_nats_closes_its_connection_for_good(tmp_path: Path) -> None:
    """The server's users change under a running exporter (a reload): nats-py closes the
    client on the server's ``Authorization Violation`` and never reconnects it. The
    exporter stops with status 1 and one line naming the cause, for its orchestrator to
    start it again with a fresh connection."""
    conf = tmp_path / "nats.conf"
    conf.write_text("authorization { users = [ {user: flow, password: one} ] }\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    env = {
        "FLOWSCOPE_NATS_URL": server.url,
        "FLOWSCOPE_NATS_USER": "flow",
        "FLOWSCOPE_NATS_PASSWORD": "one",
        "FLOWSCOPE_SINKS": "stdout",
    }
    exporter = Exporter(tmp_path, env).start()
    try:
        await exporter.ready()
        conf.write_text("authorization { users = [ {user: flow, password: two} ] }\n")
        server.process.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
        process = exporter.process
        assert process is not None
        await eventually(lambda: process.poll() is not None, within=20, what="exporter exit")
        assert process.returncode == 1, exporter.stderr()
        assert "root task nats failed: NATS connection lost for good" in exporter.stderr()
        assert "Traceback" not in exporter.stderr()
    finally:
        await exporter.stop()
        await asyncio.to_thread(server.close)
