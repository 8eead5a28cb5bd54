"""The whole collector process in a namespace node, publishing to a real nats-server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import (
    CollectorProcess,
    collector_inside,
    nats_inside,
)
from tests.privileged.collector.node import Node, finish, wait_listening
from tests.support import nats_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def nats_in_node(node: Node) -> Iterator[nats_server.NatsServer]:
    with nats_inside(node) as server:
        yield server


@pytest.fixture
def collector(node: Node, nats_in_node: nats_server.NatsServer) -> Iterator[CollectorProcess]:
    with collector_inside(node, nats_in_node.url) as proc:
        yield proc


class Records:
    """Raw records arriving on flowscope.raw.<kind>.<node>, decoded with the codec."""

    def __init__(self, schema: codec.Schema) -> None:
        self.schema = schema
        self.records: list[dict[str, Any]] = []

    async def handler(self, msg: Any) -> None:
        self.records.extend(codec.decode(self.schema, msg.headers, msg.data))

    async def wait_for(self, match: Any, within: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [r for r in self.records if match(r)]
            if found:
                await asyncio.sleep(1.5)  # one more interval: nothing else may arrive
                return [r for r in self.records if match(r)]
            await asyncio.sleep(0.1)
        raise AssertionError(f"no matching record in {self.records[-5:]}")


@dataclass
class Raw:
    flows: Records
    sockets: Records
    dns: Records


@pytest.fixture
async def raw(node: Node, nats_in_node: nats_server.NatsServer) -> AsyncIterator[Raw]:
    import nats

    with node.inside():
        nc = await nats.connect(nats_in_node.url)
    got = Raw(Records(codec.RAW_FLOW), Records(codec.RAW_SOCKET), Records(codec.RAW_DNS))
    await nc.subscribe(subjects.raw_flows("testnode"), cb=got.flows.handler)
    await nc.subscribe(subjects.raw_sockets("testnode"), cb=got.sockets.handler)
    await nc.subscribe(subjects.raw_dns("testnode"), cb=got.dns.handler)
    yield got
    await nc.close()


async def test_tcp_flow_published_and_decodable(
    node: Node, collector: CollectorProcess, raw: Raw
) -> None:
    client, server = node.pods[:2]
    srv = node.start(server, "tcp-server", server.ip4, "9090", "5000")
    wait_listening(srv)
    cli = node.start(client, "tcp-client", server.ip4, "9090", "20000")
    sent = finish(cli)
    finish(srv)
    got = await raw.flows.wait_for(lambda r: r["proto"] == 6 and r["dport"] == 9090)
    assert len(got) == 1, got
    flow = got[0]
    assert (flow["src"], flow["sport"], flow["dst"]) == (client.ip4, sent["sport"], server.ip4)
    assert flow["observer"] == "testnode" and flow["initiator"] is True
    assert flow["bytes"] > 20000 and flow["rbytes"] > 5000
    assert flow["end_reason"] == "end_of_flow_detected"
    assert collector.metric("flowscope_collector_flows_drained_total") >= 1
    # The socket owners of both ends, on raw.sockets. The tracer sees every socket on
    # the host, including those of a test run in other namespaces with the same
    # addresses and port: match this connection's exact 4-tuple (its ephemeral port).
    forward = (client.ip4, sent["sport"], server.ip4, 9090)
    reverse = (server.ip4, 9090, client.ip4, sent["sport"])
    owners = await raw.sockets.wait_for(
        lambda r: (
            r["proto"] == 6 and (r["src"], r["sport"], r["dst"], r["dport"]) in (forward, reverse)
        )
    )
    by_event = {r["event"]: r for r in owners}
    assert by_event["connect"]["pid"] == cli.pid and by_event["connect"]["sport"] == sent["sport"]
    assert by_event["accept"]["pid"] == srv.pid
    assert by_event["connect"]["comm"].startswith("python")
    assert (
        collector.metric("flowscope_collector_interfaces_attached") == 2
    )  # veths, not br0, not lo


async def test_host_to_pod_through_bridge_counted_once(
    node: Node, collector: CollectorProcess, raw: Raw
) -> None:
    """The bridge is skipped: a pod↔host exchange is counted on the pod's veth only."""
    client = node.pods[0]
    assert node.run(client, "ping", "10.203.0.1", "4")["replies"] == 4
    got = await raw.flows.wait_for(lambda r: r["proto"] == 1 and r["dst"] == "10.203.0.1")
    assert sum(r["packets"] for r in got) == 4 and sum(r["rpackets"] for r in got) == 4


async def test_new_veth_attached_within_a_second_and_counted(
    node: Node, collector: CollectorProcess, raw: Raw
) -> None:
    pod = node.add_pod()
    await eventually(
        lambda: len(node.flowscope_filters(pod.host_if)) == 2, within=1.0, what="attached (1 s)"
    )
    other = node.pods[0]
    srv = node.start(other, "udp-echo", other.ip4, "6000", "3")
    wait_listening(srv)
    node.run(pod, "udp-client", other.ip4, "6000", "3", "100")
    finish(srv)
    got = await raw.flows.wait_for(lambda r: r["proto"] == 17 and r["src"] == pod.ip4)
    assert sum(r["packets"] for r in got) == 3 and sum(r["rpackets"] for r in got) == 3


def test_sigkill_then_restart_leaves_no_stale_filters(
    node: Node, nats_in_node: nats_server.NatsServer
) -> None:
    with node.inside():
        first = CollectorProcess(nats_in_node.url, node.host).start()
    try:
        veths = [p.host_if for p in node.pods]
        assert all(len(node.flowscope_filters(v)) == 2 for v in veths)
        first.kill()
        assert all(len(node.flowscope_filters(v)) == 2 for v in veths)  # left behind by the crash
        with node.inside():
            second = CollectorProcess(nats_in_node.url, node.host).start()
        try:
            line = second.wait_log("leftover TC filters")
            assert line["leftover_filters_removed"] == 2 * len(veths)
            assert all(len(node.flowscope_filters(v)) == 2 for v in veths)  # its own, once
            assert second.stop() == 0
            assert all(node.flowscope_filters(v) == [] for v in veths), (
                "SIGTERM must remove filters"
            )
        finally:
            second.close()
    finally:
        first.close()


async def test_dns_query_published_with_answers_and_latency(
    node: Node, collector: CollectorProcess, raw: Raw
) -> None:
    client, server = node.pods[:2]
    srv = node.start(server, "dns-server", server.ip4, "53", "1")
    wait_listening(srv)
    answer = node.run(client, "dns-query", server.ip4, "53", "shop.flowscope.test")
    finish(srv)
    assert answer["answer"] == "10.203.0.99"
    events = await raw.dns.wait_for(lambda r: r["qname"].startswith("shop.flowscope.test"))
    assert len(events) == 1, events
    event = events[0]
    assert (event["id"], event["qtype"], event["rcode"]) == (answer["id"], "A", "NOERROR")
    assert (event["client"], event["server"], event["server_port"]) == (client.ip4, server.ip4, 53)
    assert event["answers"] == [
        {"name": "shop.flowscope.test", "type": "A", "ttl": 60, "data": "10.203.0.99"}
    ]
    assert event["latency_ns"] > 0
    assert (
        collector.metric("flowscope_collector_dns_captured_total") == 2
    )  # query + response, once each


def test_tiny_map_overflow_reported_in_metrics(
    node: Node, nats_in_node: nats_server.NatsServer
) -> None:
    with node.inside():
        # A 4-slot flow cache: 100 new flows still overflow the 16 map entries.
        proc = CollectorProcess(
            nats_in_node.url, node.host,
            extra=["--flows-max-entries", "16", "--flows-cache-slots", "4"],
        ).start()  # fmt: skip
    try:
        client, server = node.pods[:2]
        node.run(client, "udp-spray", server.ip4, "30000", "100")
        deadline = time.monotonic() + 5
        while (
            proc.metric("flowscope_collector_map_full_packets_total") == 0
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert proc.metric("flowscope_collector_map_full_packets_total") > 0
        assert proc.metric("flowscope_collector_map_full_bytes_total") > 0
        assert proc.metric("flowscope_collector_map_capacity") == 16
        assert proc.stop() == 0
    finally:
        proc.close()


def test_sigterm_while_nats_unreachable_exits_cleanly(node: Node) -> None:
    with node.inside():
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowscope.cli", "collector", "--http-address", "",
             "--nats-url", "nats://127.0.0.1:1", "--nats-connect-timeout", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        time.sleep(3)
        assert proc.poll() is None, "must keep retrying NATS, not exit"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=5)
        assert proc.returncode == 0, out
        assert "NATS" in out
        assert node.flowscope_filters(node.pods[0].host_if) == []  # never got as far as attaching
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exits_with_the_reason_when_nats_closes_the_connection_for_good(
    node: Node, tmp_path: Any
) -> None:
    """The server's users change under a running collector (a reload): nats-py closes
    the client for good on the ``Authorization Violation``. The collector stops with
    status 1 and one line naming the cause — its programs detached as on SIGTERM — so
    that its DaemonSet starts it again, instead of aggregating flows it can never send."""
    conf = tmp_path / "nats.conf"
    conf.write_text("authorization { users = [ {user: flow, password: one} ] }\n")
    with node.inside():
        server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    try:
        login = {"FLOWSCOPE_NATS_USER": "flow", "FLOWSCOPE_NATS_PASSWORD": "one"}
        with collector_inside(node, server.url, login) as proc:
            conf.write_text("authorization { users = [ {user: flow, password: two} ] }\n")
            server.process.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
            assert proc.proc is not None
            code = proc.proc.wait(30)
            lines = [str(entry.get("msg", "")) for entry in proc.logs()]
            assert code == 1, lines[-10:]
            assert any("NATS connection lost for good" in line for line in lines), lines[-10:]
            assert not any("Traceback" in line for line in lines), lines
        assert node.flowscope_filters(node.pods[0].host_if) == []
    finally:
        server.close()
