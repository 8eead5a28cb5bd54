"""DNS reading: parse errors and parser bugs are counted and skipped, never raised."""

from __future__ import annotations

import ctypes
from typing import Any

from flowscope.collector import abi
from flowscope.collector.dns_reading import DnsReader
from flowscope.collector.metrics import CollectorMetrics
from flowscope.core.records import RawDns
from prometheus_client import CollectorRegistry


class ParseError(Exception):
    pass


class Observer:
    """Behaves by the packet's first byte: 'e' parse error, 'b' bug, else an event."""

    def observe(self, data: bytes, ts_unix_ns: int) -> RawDns | None:
        if data[:1] == b"e":
            raise ParseError("bad")
        if data[:1] == b"b":
            raise IndexError("parser bug")
        return RawDns("n", ts_unix_ns, 1, "x.test", "A", "NOERROR", "10.0.0.1", 1, "10.0.0.2", 53)

    def expire(self, now_ns: int) -> list[RawDns]:
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
