"""DNS reading: parse errors and parser bugs are counted and skipped, never raised."""

from __future__ import annotations

import asyncio
import ctypes
from typing import Any

from flowscope.collector import abi
from flowscope.collector.dns_parsing import DnsExchanges, ExchangeCounts
from flowscope.collector.dns_reading import DnsReader
from flowscope.collector.metrics import CollectorMetrics
from flowscope.core.records import RawDns
from prometheus_client import CollectorRegistry

from tests.unit.collector import packet_building as pb


class ParseError(Exception):
    pass


class Observer:
    """Behaves by the packet's first byte: 'e' parse error, 'b' bug, else an event."""

    counts = ExchangeCounts()

    def observe(self, data: bytes, ts_unix_ns: int, out: list[RawDns]) -> None:
        if data[:1] == b"e":
            raise ParseError("bad")
        if data[:1] == b"b":
            raise IndexError("parser bug")
        out.append(
            RawDns("n", ts_unix_ns, 1, "x.test", "A", "NOERROR", "10.0.0.1", 1, "10.0.0.2", 53)
        )

    def expire(self, now_ns: int) -> list[RawDns]:
        return []

    def expire_all(self) -> list[RawDns]:
        return []


class Ring:
    """Stands in for bcc: open_ring_buffer stores the callback, consume feeds events."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.callback: Any = None

    def open_ring_buffer(self, callback: Any) -> None:
        self.callback = callback

    def ring_buffer_consume(self) -> None:
        event_type = abi.dns_event_type(64)
        for payload in self.payloads:
            event = event_type(ts_ns=5, ifindex=2, pkt_len=len(payload), cap_len=len(payload))
            event.data[: len(payload)] = list(payload)
            self.callback(None, ctypes.addressof(event), ctypes.sizeof(event))
        self.payloads = []


def test_errors_counted_events_delivered() -> None:
    ring = Ring([b"ok", b"e-garbage", b"b-bug", b"ok"])
    metrics = CollectorMetrics.create(CollectorRegistry())
    reader = DnsReader(ring, ring, 64, Observer(), lambda r: None, metrics, (ParseError,))
    events = reader.poll()
    assert len(events) == 2 and events[0].time_ns > 5
    assert metrics.dns_parse_errors._value.get() == 2
    assert reader.poll() == []


def test_pairing_outcomes_counted_once_each() -> None:
    """dns_pairing_total{outcome} follows the parser's counts: deltas, never twice."""
    client, server, backend = "10.9.0.2", "10.96.0.10", "10.9.1.7"

    def udp(src: str, dst: str, sport: int, dport: int, message: bytes) -> bytes:
        return pb.ipv4(src, dst, 17, pb.udp(sport, dport, message))

    ring = Ring([
        udp(client, server, 4000, 53, pb.query("a.test", ident=1)),
        udp(server, client, 53, 4000, pb.response("a.test", [], ident=1)),  # answered
        udp(client, server, 4001, 53, pb.query("b.test", ident=2)),
        udp(backend, client, 53, 4001, pb.response("b.test", [], ident=2)),  # translated
        udp(server, client, 53, 4002, pb.response("c.test", [], ident=3)),  # unmatched
    ])  # fmt: skip
    metrics = CollectorMetrics.create(CollectorRegistry())
    delivered: list[RawDns] = []
    reader = DnsReader(ring, ring, 64, DnsExchanges("n"), delivered.extend, metrics, (ParseError,))
    reader._deliver(reader.poll())
    reader._deliver(reader.poll())  # nothing new: nothing added

    def outcome(name: str) -> float:
        return metrics.dns_pairing.labels(name)._value.get()

    assert [outcome(o) for o in ("answered", "translated", "unmatched")] == [1, 1, 1]
    assert outcome("expired") == 0 and len(delivered) == 3


def udp4(src: str, dst: str, sport: int, dport: int, message: bytes) -> bytes:
    return pb.ipv4(src, dst, 17, pb.udp(sport, dport, message))


async def test_queries_pending_at_stop_are_delivered_unanswered() -> None:
    """run() ends with a last poll, then every query still pending, as expiry would."""
    ring = Ring([udp4("10.9.0.2", "10.96.0.10", 4000, 53, pb.query("late.test", ident=4))])
    metrics = CollectorMetrics.create(CollectorRegistry())
    delivered: list[RawDns] = []
    exchanges = DnsExchanges("n")
    reader = DnsReader(ring, ring, 64, exchanges, delivered.extend, metrics, (ParseError,))
    stopping = asyncio.Event()
    stopping.set()
    await reader.run(stopping)
    assert [(r.qname, r.rcode, r.latency_ns) for r in delivered] == [("late.test", "", 0)]
    assert exchanges.pending() == 0
    assert metrics.dns_pairing.labels("expired")._value.get() == 1


def test_tcp_continuations_counted_as_skipped_not_errors() -> None:
    """A message split inside its question (the ring holds 64 bytes): no event can be
    made of it, but the first part is not malformed and the second not a message."""
    message = pb.tcp_dns(pb.response("t.test", [], ident=8))
    ring = Ring([
        pb.ipv4("10.96.0.10", "10.9.0.2", 6, pb.tcp(53, 4000, message[:20], seq=1)),
        pb.ipv4("10.96.0.10", "10.9.0.2", 6, pb.tcp(53, 4000, message[20:], seq=21)),
    ])  # fmt: skip
    metrics = CollectorMetrics.create(CollectorRegistry())
    delivered: list[RawDns] = []
    reader = DnsReader(ring, ring, 64, DnsExchanges("n"), delivered.extend, metrics, (ParseError,))
    reader._deliver(reader.poll())
    assert metrics.dns_tcp_skipped._value.get() == 2 and delivered == []
    assert metrics.dns_parse_errors._value.get() == 0
