"""Read captured DNS packets from the kernel ring buffer and turn them into RawDns records.

The ring buffer callback only copies ``data[:cap_len]`` (bcc's pointer is valid during
the callback alone); parsing happens afterwards, in the event loop, through the
:class:`DnsObserver` seam (``dns_parsing.DnsExchanges``). A packet the parser rejects is
counted in ``flowscope_collector_dns_parse_errors_total``, logged rate-limited, skipped
(the events of messages before the bad one in the same TCP segment are delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes as ct
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from flowscope.collector import abi
from flowscope.collector.dns_parsing import ExchangeCounts
from flowscope.collector.draining import monotonic_to_realtime_offset
from flowscope.collector.metrics import CollectorMetrics
from flowscope.core.logs import RateLimitedLog
from flowscope.core.records import RawDns

log = logging.getLogger("flowscope.collector.dns_reading")

POLL_INTERVAL = 0.1  # s between ring buffer polls (non-blocking consume in the event loop)
EXPIRE_INTERVAL = 1.0  # s between expiries of queries that got no response


class DnsObserver(Protocol):
    """What the DNS parser offers (flowscope.collector.dns_parsing.DnsExchanges)."""

    def observe(self, data: bytes, ts_unix_ns: int, out: list[RawDns]) -> None: ...

    def expire(self, now_ns: int) -> list[RawDns]: ...

    def expire_all(self) -> list[RawDns]: ...

    @property
    def counts(self) -> ExchangeCounts: ...


@dataclass(frozen=True, slots=True)
class CapturedPacket:
    """One ring buffer event, copied out of bcc's buffer."""

    ts_mono_ns: int
    ifindex: int
    pkt_len: int
    direction: int
    data: bytes  # from the IP header on, cap_len bytes


class DnsReader:
    """Owns the ring buffer subscription; ``run`` is a producer task."""

    def __init__(
        self,
        bpf: Any,
        table: Any,
        capture_len: int,
        observer: DnsObserver,
        emit: Callable[[list[RawDns]], None],
        metrics: CollectorMetrics,
        parse_errors: tuple[type[Exception], ...],
    ) -> None:
        self._bpf = bpf
        self._event = ct.POINTER(abi.dns_event_type(capture_len))
        self._capture_len = capture_len
        self._observer = observer
        self._emit = emit
        self._metrics = metrics
        self._parse_errors = parse_errors
        self._batch: list[CapturedPacket] = []
        self._counted = ExchangeCounts()  # the pairing counts already in the metrics
        self._bad = RateLimitedLog(log)
        table.open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        event = ct.cast(data, self._event).contents
        length = min(int(event.cap_len), self._capture_len)
        payload = ct.string_at(ct.addressof(event.data), length)
        self._batch.append(
            CapturedPacket(event.ts_ns, event.ifindex, event.pkt_len, event.direction, payload)
        )
        return 0

    def poll(self) -> list[RawDns]:
        """Consume the ring buffer without blocking and parse what arrived."""
        self._bpf.ring_buffer_consume()
        batch, self._batch = self._batch, []
        if not batch:
            return []
        offset = monotonic_to_realtime_offset()
        out: list[RawDns] = []
        for packet in batch:
            try:
                self._observer.observe(packet.data, packet.ts_mono_ns + offset, out)
            except self._parse_errors as e:
                self._metrics.dns_parse_errors.inc()
                self._bad.warning(
                    "dns-parse-error", "captured DNS packet does not parse; skipped",
                    error=str(e), ifindex=packet.ifindex, length=packet.pkt_len,
                )  # fmt: skip
            except Exception as e:
                # A parser bug, triggered by a packet from the wire: crashing would let
                # anyone stop the collector with one packet. Count it, log it loudly.
                self._metrics.dns_parse_errors.inc()
                self._bad.warning(
                    "dns-parser-bug", "DNS parser failed unexpectedly; packet skipped",
                    error=repr(e), packet=packet.data[:64].hex(),
                )  # fmt: skip
        return out

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll until ``stopping``; then a last poll, and every query still pending as unanswered."""
        next_expiry = time.monotonic() + EXPIRE_INTERVAL
        while not stopping.is_set():
            self._deliver(self.poll())
            if time.monotonic() >= next_expiry:
                self._deliver(self._observer.expire(time.time_ns()))
                next_expiry = time.monotonic() + EXPIRE_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)
        self._deliver(self.poll())
        # Queries still unanswered will not be answered by this process: report them as
        # expiry would (the question was asked, no answer was seen).
        self._deliver(self._observer.expire_all())

    def _deliver(self, records: list[RawDns]) -> None:
        now = self._observer.counts
        self._metrics.observe_dns_pairing(now, self._counted)
        self._counted = replace(now)
        if records:
            self._metrics.dns_events.inc(len(records))
            self._emit(records)
