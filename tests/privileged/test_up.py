"""`flowscope up`, as the README runs it: enriched flows for local traffic, clean Ctrl-C.

Ctrl-C is sent as a terminal sends it: SIGINT to the whole foreground process group, so
it reaches `up` and anything it started in that group (nats-server once was, and stopped
before the services had drained into it; the exporter then died with a traceback).

The whole command runs inside a namespace "node" (a host namespace with a bridge and pod
namespaces on veths), so its default interface selection — every interface but `lo` —
applies to interfaces this test created, and its nats-server listens on that node's
loopback. Traffic: a TCP exchange of known size between two pods.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

from tests.privileged.collector.node import Node, finish, wait_listening


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"up{os.getpid()}", ipv6=False).built() as built:
        yield built


def _wait_for(q: queue.Queue[str], predicate: Any, deadline: float) -> Any:
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        found = predicate(line)
        if found:
            return found
    return None


def test_up_shows_enriched_flows_then_stops_cleanly(node: Node) -> None:
    client_pod, server_pod = node.pods
    with node.inside():
        up = subprocess.Popen(
            [sys.executable, "-m", "flowscope.cli", "up", "--log-format", "text"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )  # fmt: skip
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    assert up.stdout is not None and up.stderr is not None
    threading.Thread(target=_lines, args=(up.stdout, out), daemon=True).start()
    err_reader = threading.Thread(target=_lines, args=(up.stderr, err), daemon=True)
    err_reader.start()
    try:
        summary = _wait_for(
            err, lambda line: line if "flowscope up: ready" in line else None,
            time.monotonic() + 180,
        )  # fmt: skip
        assert summary, "flowscope up never said it was ready"
        assert re.search(r"\b\d+ interfaces? attached", summary) and "sinks stdout" in summary

        server = node.start(server_pod, "tcp_server", server_pod.ip4, "8080", "3000")
        wait_listening(server)
        started = time.monotonic()
        sent = node.run(client_pod, "tcp_client", server_pod.ip4, "8080", "5000")
        assert finish(server)["received"] == 5000

        def ours(line: str) -> dict[str, Any] | None:
            record = json.loads(line)
            if (
                record.get("destination.port") == 8080
                and record.get("source.port") == sent["sport"]
            ):
                return record
            return None

        record = _wait_for(out, ours, started + 10)
        print(f"enriched record after {time.monotonic() - started:.1f} s")
        assert record, "no enriched record for the TCP exchange within 10 s"
        assert record["source.address"] == client_pod.ip4
        assert record["destination.address"] == server_pod.ip4
        assert record["network.transport"] == "tcp"
        assert record["flow.direction"] == "forward"
        assert "SYN" in record["flow.tcp.flags.tags"]
        # 5000 payload bytes one way, 3000 the other, plus IP/TCP headers
        assert record["flow.bytes.delta"] > 5000
        assert record["flow.reverse.bytes.delta"] > 3000
        assert record["source.kind"] in ("host", "external")
        assert record["observer.node.name"]
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C
        try:
            status = up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    err_reader.join(10)
    stopping = "".join(err.get() for _ in range(err.qsize()))
    assert "Traceback" not in stopping, stopping
    assert "NATS closed without a final flush" not in stopping, stopping
    assert "NATS disconnected" not in stopping, stopping  # NATS is stopped last
    assert status == 0, stopping
    for pod in node.pods:
        for direction in ("ingress", "egress"):
            shown = node.hx("tc", "filter", "show", "dev", pod.host_if, direction)
            assert "flowscope" not in shown, shown
