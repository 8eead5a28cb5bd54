"""The collector's one catalogue of metrics, and the kernel counters they come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowscope.collector import abi
from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from flowscope.collector.dns_parsing import ExchangeCounts
    from flowscope.collector.nat_pairing import NatTally

KINDS = ("flows", "sockets", "dns")
# dns_parsing.ExchangeCounts fields, each an outcome label of dns_pairing_total
DNS_OUTCOMES = ("answered", "translated", "unmatched", "expired", "evicted", "retransmits")


@dataclass(frozen=True, slots=True)
class KernelCounters:
    """Sum over CPUs of ``struct collector_counters``."""

    map_full_packets: int = 0
    map_full_bytes: int = 0
    dns_ringbuf_full: int = 0
    dns_captured: int = 0


def read_counters(table: Any) -> KernelCounters:
    """Sum the per-CPU ``counters`` array (entry 0) of the flow program."""
    per_cpu = table[table.Key(0)]
    sums = {field[0]: 0 for field in abi.CollectorCounters._fields_}
    for cpu in per_cpu:
        for name in sums:
            sums[name] += getattr(cpu, name)
    return KernelCounters(**sums)


@dataclass(slots=True)
class CollectorMetrics:
    """Every metric the collector exports (names: flowscope_collector_*)."""

    flows_drained: Counter
    drains: Counter
    map_entries: Gauge
    map_capacity: Gauge
    map_full_packets: Counter
    map_full_bytes: Counter
    dns_ringbuf_full: Counter
    dns_captured: Counter
    dns_parse_errors: Counter
    dns_events: Counter
    dns_pairing: Counter
    dns_tcp_skipped: Counter
    publish_batches: Counter
    publish_bytes: Counter
    publish_records: Counter
    publish_errors: Counter
    publish_dropped: Counter
    publish_buffered_bytes: Gauge
    interfaces_attached: Gauge
    attach_errors: Counter
    leftover_filters_removed: Counter
    link_event_overflows: Counter
    nat_lookups: Counter
    nat_pairs: Counter
    nat_rewritten: Counter
    nat_misses: Counter
    conntrack_errors: Counter
    _last: KernelCounters

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CollectorMetrics:
        p = "flowscope_collector_"
        kind = ["kind"]
        return cls(
            Counter(p + "flows_drained", "flow records drained from the kernel map", registry=registry),
            Counter(p + "drains", "drains of the kernel flow map", registry=registry),
            Gauge(p + "map_entries", "flow map entries at the last drain (occupancy)", registry=registry),
            Gauge(p + "map_capacity", "flow map size (flows.max_entries)", registry=registry),
            Counter(p + "map_full_packets", "packets not aggregated because the flow map was full", registry=registry),
            Counter(p + "map_full_bytes", "IP bytes not aggregated because the flow map was full", registry=registry),
            Counter(p + "dns_ringbuf_full", "DNS packets not captured: ring buffer full", registry=registry),
            Counter(p + "dns_captured", "DNS packets copied to the ring buffer", registry=registry),
            Counter(p + "dns_parse_errors", "captured DNS packets that did not parse", registry=registry),
            Counter(p + "dns_events", "DNS exchanges produced", registry=registry),
            Counter(p + "dns_pairing", "DNS queries and responses by pairing outcome", ["outcome"], registry=registry),
            Counter(p + "dns_tcp_skipped", "captured TCP segments where no DNS message starts (continuations, retransmits)", registry=registry),
            Counter(p + "publish_batches", "messages published", kind, registry=registry),
            Counter(p + "publish_bytes", "message body bytes published", kind, registry=registry),
            Counter(p + "publish_records", "records published", kind, registry=registry),
            Counter(p + "publish_errors", "failed publish attempts (retried)", kind, registry=registry),
            Counter(p + "publish_dropped_records", "records dropped before publishing", ["kind", "reason"], registry=registry),
            Gauge(p + "publish_buffered_bytes", "encoded bytes waiting for NATS", kind, registry=registry),
            Gauge(p + "interfaces_attached", "interfaces with the TC programs attached", registry=registry),
            Counter(p + "attach_errors", "interfaces the TC programs could not be attached to", registry=registry),
            Counter(p + "leftover_filters_removed", "TC filters of an earlier run removed at start", registry=registry),
            Counter(p + "link_event_overflows", "times link events were lost (socket overflow) and the links listed again", registry=registry),
            Counter(p + "nat_lookups", "flow tuples looked up in conntrack (NAT pairing)", registry=registry),
            Counter(p + "nat_pairs", "NAT'ed connections (DNAT or SNAT) whose two one-way halves were joined into one flow", registry=registry),
            Counter(p + "nat_rewritten", "halves of NAT'ed connections rewritten alone (the other half not in the drain)", registry=registry),
            Counter(p + "nat_misses", "conntrack lookups that found nothing to pair (no entry, not NAT'ed, or DNAT'ed and SNAT'ed at once)", registry=registry),
            Counter(p + "conntrack_errors", "batches of conntrack lookups that failed (timeout, enobufs, socket, malformed); their flows were published unpaired", ["reason"], registry=registry),
            KernelCounters(),
        )  # fmt: skip

    def observe_nat(self, tally: NatTally) -> None:
        """Add one drain's NAT-pairing counts."""
        self.nat_lookups.inc(tally.lookups)
        self.nat_pairs.inc(tally.pairs)
        self.nat_rewritten.inc(tally.rewritten)
        self.nat_misses.inc(tally.misses)
        for reason, count in tally.errors.items():
            self.conntrack_errors.labels(reason).inc(count)

    def observe_dns_pairing(self, now: ExchangeCounts, last: ExchangeCounts) -> None:
        """Advance ``dns_pairing_total{outcome}`` by what the pairing counted since ``last``."""
        for outcome in DNS_OUTCOMES:
            delta = getattr(now, outcome) - getattr(last, outcome)
            if delta:
                self.dns_pairing.labels(outcome).inc(delta)
        self.dns_tcp_skipped.inc(now.tcp_skipped - last.tcp_skipped)

    def observe_kernel(self, now: KernelCounters) -> None:
        """Advance the kernel-loss counters by what changed since the last reading."""
        last = self._last
        self.map_full_packets.inc(max(0, now.map_full_packets - last.map_full_packets))
        self.map_full_bytes.inc(max(0, now.map_full_bytes - last.map_full_bytes))
        self.dns_ringbuf_full.inc(max(0, now.dns_ringbuf_full - last.dns_ringbuf_full))
        self.dns_captured.inc(max(0, now.dns_captured - last.dns_captured))
        self._last = now


@dataclass(slots=True)
class SocketSnapshotMetrics:
    """The start-up snapshot of existing connections (``socket_snapshotting``)."""

    sockets: Counter
    skipped: Counter
    errors: Counter
    seconds: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SocketSnapshotMetrics:
        p = "flowscope_collector_socket_snapshot_"
        return cls(
            Counter(p + "sockets", "connections that existed at start-up, reported with their owner, by event", ["event"], registry=registry),
            Counter(p + "skipped", "connections found at start-up but not reported (no_owner, limit, deadline)", ["reason"], registry=registry),
            Counter(p + "errors", "problems met by the start-up snapshot (malformed table lines, unreadable tables, deadline, fd_list_denied, fd_read_denied)", ["reason"], registry=registry),
            Gauge(p + "seconds", "how long the start-up snapshot took", registry=registry),
        )  # fmt: skip


@dataclass(slots=True)
class SocketTracerMetrics:
    """The socket-owner BPF programs and their ring buffer (``socket_tracing``)."""

    events: Counter
    lost: Counter
    bad: Counter
    programs_attached: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SocketTracerMetrics:
        p = "flowscope_collector_socket_"
        return cls(
            Counter(p + "events", "Socket-owner events read from the kernel, by kind", ["event"], registry=registry),
            Counter(p + "events_lost", "Socket-owner events the kernel could not deliver (ring buffer full)", registry=registry),
            Counter(p + "events_bad", "Socket-owner events skipped because they could not be decoded", registry=registry),
            Gauge(p + "programs_attached", "Socket-owner BPF programs attached to the cgroup v2 root", registry=registry),
        )  # fmt: skip
