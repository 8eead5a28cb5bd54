"""The TC programs in a real kernel count exactly what crossed the node's interfaces."""

from __future__ import annotations

import time

import pytest

from flowscope.core.records import RawFlow, tcp_flag_tags
from tests.privileged.collector.conftest import Kernel
from tests.privileged.collector.node import Capture, Node, finish, wait_listening


def drain(kernel: Kernel) -> list[RawFlow]:
    return kernel.drainer.drain().flows  # type: ignore[attr-defined]


def only(flows: list[RawFlow], proto: int, a: str, b: str) -> RawFlow:
    """The one record between addresses a and b (either direction) of proto."""
    found = [f for f in flows if f.proto == proto and {f.src, f.dst} == {a, b}]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_transfer_counted_exactly_per_direction(node: Node, kernel: Kernel, family: str) -> None:
    client, server = node.pods
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
