"""A DNS response larger than the server's MTU leaves it as IP fragments: the kernel
copies the first (it has the ports) and the parser keeps the answers it holds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node, netns, sh
from tests.privileged.collector.programs import attached
from tests.unit.collector import packet_building as pb

CAPTURE = 1504  # more than a first fragment (and a multiple of 8: see the report)


@pytest.fixture
def dns_node() -> Iterator[Node]:
    """A node per test: an IPv4 MTU below 1280 takes IPv6 off the interface for good."""
    with Node(tag=f"fsdns{os.getpid()}").built() as built:
        yield built


@pytest.mark.parametrize(("family", "mtu", "records"), [(4, 600, 60), (6, 1280, 120)])
def test_fragmented_response_is_an_event_with_answers(
    dns_node: Node, family: int, mtu: int, records: int
) -> None:
    from flowscope.collector.dns_parsing import DnsExchanges, DnsParseError
    from flowscope.collector.dns_reading import DnsReader
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import CollectorMetrics
    from flowscope.core.records import RawDns

    client, server = dns_node.pods
    caddr, saddr = (client.ip4, server.ip4) if family == 4 else (client.ip6, server.ip6)
    answers = [("big.flowscope.test", "A", 60, f"192.0.2.{i % 250}") for i in range(records)]
    message = pb.response("big.flowscope.test", answers, ident=77)
    assert len(message) > mtu
    sh("ip", "netns", "exec", server.ns, "ip", "link", "set", "eth0", "mtu", str(mtu))
    config = FlowProgramConfig(max_flows=1024, dns_port=53, dns_capture_len=CAPTURE)
    metrics = CollectorMetrics.create(CollectorRegistry())
    events: list[RawDns] = []
    with attached(dns_node, config, [server.host_if]) as kernel:
        program = kernel.program
        reader = DnsReader(
            program.bpf, program.dns_events, CAPTURE, DnsExchanges("n"), events.extend,
            metrics, (DnsParseError,),
        )  # fmt: skip
        kind = socket.AF_INET if family == 4 else socket.AF_INET6
        with netns(server.ns), socket.socket(kind, socket.SOCK_DGRAM) as sock:
            sock.bind((saddr, 53))
            sock.sendto(message, (caddr, 40000))  # nobody listens there: not needed
        for _ in range(20):
            reader._deliver(reader.poll())
            if events or metrics.dns_parse_errors._value.get():
                break
            time.sleep(0.05)
    assert metrics.dns_parse_errors._value.get() == 0
    (event,) = events
    reported = (event.qname, event.id, event.client, event.server)
    assert reported == ("big.flowscope.test", 77, caddr, saddr)
    got = [a["data"] for a in event.answers]
    assert 10 < len(got) < records  # the first fragment's share of the answers
    assert got == [f"192.0.2.{i % 250}" for i in range(len(got))]
