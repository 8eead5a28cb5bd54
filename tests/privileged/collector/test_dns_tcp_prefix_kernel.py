"""DNS over TCP between two pods, each side writing the 2-byte length prefix and the
message with two send() calls on a TCP_NODELAY socket: four payload segments, two of
them a bare prefix. The exchange is one paired event with its answers (before: none at
all, every segment skipped as a continuation)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import Node, netns
from tests.privileged.collector.programs import attached
from tests.unit.collector import packet_building as pb

NAME = "t.flowscope.test"
ANSWERS = [(NAME, "A", 60, "192.0.2.7")]


@pytest.fixture
def dns_node() -> Iterator[Node]:
    with Node(tag=f"dtp{os.getpid()}").built() as built:
        yield built


def send_split(sock: socket.socket, message: bytes) -> None:
    """The prefix, then the message: two segments (the first is sent before the second
    is written, and TCP_NODELAY keeps them apart)."""
    sock.sendall(len(message).to_bytes(2, "big"))
    time.sleep(0.05)
    sock.sendall(message)


def receive(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data[2:]


def serve(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ident = int.from_bytes(receive(conn)[:2], "big")
        send_split(conn, pb.response(NAME, ANSWERS, ident=ident))
        conn.recv(1)  # until the client closes


def exchange(node: Node) -> None:
    client, server = node.pods
    with netns(server.ns):
        listener = socket.create_server((server.ip4, 53))
    with listener:
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        with netns(client.ns), socket.socket() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((server.ip4, 53))
            send_split(sock, pb.query(NAME, ident=4242))
            assert receive(sock)
        thread.join(10)


def test_length_prefix_in_its_own_segment_is_one_paired_event(dns_node: Node) -> None:
    from flowscope.collector.dns_parsing import DnsExchanges, DnsParseError
    from flowscope.collector.dns_reading import DnsReader
    from flowscope.collector.loading import FlowProgramConfig
    from flowscope.collector.metrics import CollectorMetrics
    from flowscope.core.records import RawDns

    client, server = dns_node.pods
    config = FlowProgramConfig(max_flows=1024, dns_port=53, dns_capture_len=512)
    metrics = CollectorMetrics.create(CollectorRegistry())
    events: list[RawDns] = []
    exchanges = DnsExchanges("n")
    with attached(dns_node, config, [client.host_if, server.host_if]) as kernel:
        program = kernel.program
        reader = DnsReader(
            program.bpf, program.dns_events, 512, exchanges, events.extend, metrics,
            (DnsParseError,),
        )  # fmt: skip
        exchange(dns_node)
        for _ in range(40):
            reader._deliver(reader.poll())
            if events:
                break
            time.sleep(0.05)
    assert metrics.dns_parse_errors._value.get() == 0
    (event,) = events
    assert (event.id, event.qname, event.client, event.server) == (
        4242, NAME, client.ip4, server.ip4,
    )  # fmt: skip
    assert event.latency_ns > 0 and [a["data"] for a in event.answers] == ["192.0.2.7"]
    assert exchanges.counts.answered == 1 and exchanges.counts.tcp_skipped == 0
