"""The TC programs in a real kernel count exactly what crossed the node's interfaces."""

from __future__ import annotations

import time

import pytest
from flowscope.core.records import RawFlow, tcp_flag_tags

from tests.privileged.collector.node import Capture, Node, finish, wait_listening
from tests.privileged.collector.programs import Kernel


def drain(kernel: Kernel) -> list[RawFlow]:
    return kernel.drainer.drain().flows  # type: ignore[attr-defined]


def only(flows: list[RawFlow], proto: int, a: str, b: str) -> RawFlow:
    """The one record between addresses a and b (either direction) of proto."""
    found = [f for f in flows if f.proto == proto and {f.src, f.dst} == {a, b}]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_transfer_counted_exactly_per_direction(
    node: Node, kernel: Kernel, family: str
) -> None:
    client, server = node.pods[:2]
    caddr, saddr = (client.ip4, server.ip4) if family == "ipv4" else (client.ip6, server.ip6)
    with node.inside():
        drain(kernel)
        capture = Capture(client.host_if)
        srv = node.start(server, "tcp-server", saddr, "8080", "300000")
        wait_listening(srv)
        sent = node.run(client, "tcp-client", saddr, "8080", "1000000")
        assert finish(srv)["received"] == 1_000_000 and sent["received"] == 300_000
        time.sleep(0.2)
        capture.stop()
        flows = drain(kernel)
    flow = only(flows, 6, caddr, saddr)
    fid = (6, caddr, saddr, sent["sport"], 8080)
    rid = (6, saddr, caddr, 8080, sent["sport"])
    assert (flow.src, flow.sport, flow.dst, flow.dport) == (caddr, sent["sport"], saddr, 8080)
    assert flow.initiator is True
    assert (flow.packets, flow.bytes) == (capture.packets[fid], capture.bytes[fid])
    assert (flow.rpackets, flow.rbytes) == (capture.packets[rid], capture.bytes[rid])
    assert flow.bytes > 1_000_000 and flow.rbytes > 300_000
    assert {"SYN", "FIN", "ACK"} <= set(tcp_flag_tags(flow.tcp_flags))
    assert flow.end_reason == "end_of_flow_detected"
    assert flow.start_ns <= flow.end_ns and abs(flow.end_ns - time.time_ns()) < 10e9


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_udp_exchange_counted_exactly(node: Node, kernel: Kernel, family: str) -> None:
    client, server = node.pods[:2]
    caddr, saddr = (client.ip4, server.ip4) if family == "ipv4" else (client.ip6, server.ip6)
    with node.inside():
        drain(kernel)
        srv = node.start(server, "udp-echo", saddr, "5353", "7")
        wait_listening(srv)
        sent = node.run(client, "udp-client", saddr, "5353", "7", "1000")
        finish(srv)
        time.sleep(0.1)
        flows = drain(kernel)
    flow = only(flows, 17, caddr, saddr)
    header = 28 if family == "ipv4" else 48
    assert (flow.src, flow.sport, flow.dst, flow.dport) == (caddr, sent["sport"], saddr, 5353)
    assert (flow.packets, flow.bytes) == (7, 7 * (1000 + header))
    assert (flow.rpackets, flow.rbytes) == (7, 7 * (1000 + header))
    assert flow.initiator is False and flow.tcp_flags == 0
    assert flow.end_reason == "active_timeout"


def test_flow_times_are_unix_ns_within_a_tick_of_the_packets(node: Node, kernel: Kernel) -> None:
    """The kernel stamps timer ticks; records carry unix ns exact to about one tick."""
    client, server = node.pods[:2]
    tick = round(time.clock_getres(6) * 1e9)  # CLOCK_MONOTONIC_COARSE resolution: a tick
    with node.inside():
        drain(kernel)
        srv = node.start(server, "udp-echo", server.ip4, "5355", "3")
        wait_listening(srv)
        before = time.time_ns()
        node.run(client, "udp-client", server.ip4, "5355", "3", "100")
        after = time.time_ns()
        finish(srv)
        flows = drain(kernel)
    flow = only(flows, 17, client.ip4, server.ip4)
    slack = 2 * tick + 5_000_000  # the tick grid, the pair, and the realtime offset's error
    assert before - slack <= flow.start_ns <= flow.end_ns <= after + slack


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_icmp_echo_counted_exactly(node: Node, kernel: Kernel, family: str) -> None:
    client, server = node.pods[:2]
    caddr, saddr = (client.ip4, server.ip4) if family == "ipv4" else (client.ip6, server.ip6)
    proto, request = (1, 8) if family == "ipv4" else (58, 128)
    with node.inside():
        drain(kernel)
        assert node.run(client, "ping", saddr, "5")["replies"] == 5
        time.sleep(0.1)
        flows = drain(kernel)
    flow = only(flows, proto, caddr, saddr)
    size = (20 if family == "ipv4" else 40) + 8 + 56
    assert (flow.src, flow.dst, flow.sport, flow.dport) == (caddr, saddr, request, 0)
    assert (flow.packets, flow.bytes, flow.rpackets, flow.rbytes) == (5, 5 * size, 5, 5 * size)


def test_same_node_pod_to_pod_counted_once(node: Node, kernel: Kernel) -> None:
    """pod→pod crosses two monitored veths (ingress on one, egress on the other)."""
    client, server = node.pods[:2]
    with node.inside():
        drain(kernel)
        at_client, at_server = Capture(client.host_if), Capture(server.host_if)
        tx0, rx0 = node.tx_rx(client)
        srv = node.start(server, "udp-echo", server.ip4, "7000", "20")
        wait_listening(srv)
        node.run(client, "udp-client", server.ip4, "7000", "20", "200")
        finish(srv)
        tx1, rx1 = node.tx_rx(client)
        time.sleep(0.1)
        at_client.stop()
        at_server.stop()
        flows = drain(kernel)
    flow = only(flows, 17, client.ip4, server.ip4)
    # Both veths saw all 40 packets; the flow holds each once.
    assert sum(at_client.packets.values()) >= 40 and sum(at_server.packets.values()) >= 40
    assert (flow.packets, flow.rpackets) == (20, 20)
    assert flow.packets <= tx1 - tx0 and flow.rpackets <= rx1 - rx0
