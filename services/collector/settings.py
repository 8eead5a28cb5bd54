"""Settings of the collector (flags, FLOWSCOPE_* variables, YAML): see docs/collector.md."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from flowscope.core.config import positive, section, setting
from flowscope.core.messaging import NatsSettings
from flowscope.core.runtime import RuntimeSettings

# dns.capture_bytes at least: IPv6 (40) + TCP with all 40 option bytes (60) + TCP's length
# prefix (2) + the DNS header (12) leave 142 bytes for the question, a name of up to 138
# (IPv4 and UDP: 212). A packet whose question is cut off does not parse: at the 64
# accepted before, every query for a name of a Kubernetes Service was a parse error.
DNS_CAPTURE_MIN = 256
# publish.buffer_bytes at least. A drain submits its flows 4096 at a time (~1.2 MB, 2.4 MB
# with IPv6 addresses and a long node name) and waits only while the buffer is more than
# half full (Publisher.catch_up); a sealed batch that does not fit beside that is dropped
# at once, NATS healthy or not (at 64 KiB, all 1000 records of a default batch were).
BUFFER_MIN = 8 * 1024 * 1024


def _between(low: int, high: int):  # type: ignore[no-untyped-def]
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


def _power_of_two(value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError("must be a power of two")
    return value


def _power_of_two_or_zero(value: int) -> int:
    if value == 0:
        return value
    if value > 1 << 20:
        raise ValueError("must be at most 1048576")
    return _power_of_two(value)


def _ports(value: tuple[int, ...]) -> tuple[int, ...]:
    if len(value) > 4:  # loading.TUNNEL_PORTS: the flow program compares with four
        raise ValueError("at most 4 ports")
    for port in value:
        _between(1, 65535)(port)
    return value


def _patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        fnmatch.translate(pattern)  # any text is a valid glob; keeps the intent explicit
    return value


@dataclass(frozen=True, slots=True)
class InterfaceSettings:
    """Which interfaces of the host network namespace get the TC programs."""

    include: tuple[str, ...] = setting(
        ("*",),
        "glob patterns of interface names to attach to (comma-separated); new interfaces "
        "matching them are attached within 1 s",
        parse=_patterns,
    )
    exclude: tuple[str, ...] = setting(
        ("lo",),
        "glob patterns of interface names never attached; `lo` by default because "
        "loopback traffic never leaves the node",
        parse=_patterns,
    )
    skip_bridges: bool = setting(
        True,
        "do not attach to bridge master devices: a frame between a pod and the host "
        "crosses the bridge port (veth) and the bridge, and would be counted twice",
    )


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """In-kernel flow aggregation and how often it is drained."""

    active_timeout: float = setting(
        5.0,
        "seconds between drains of the flow map; a long flow is reported once per interval",
        parse=positive,
    )
    idle_timeout: float = setting(
        3.0,
        "seconds without a packet after which a drained flow ends with `idle_timeout`; "
        "meaningful below active_timeout, since the map is emptied at every drain",
        parse=positive,
    )
    max_entries: int = setting(
        65536,
        "entries of the kernel flow map (64 B key+value each, preallocated); packets of "
        "new flows beyond it are counted in flowscope_collector_map_full_* metrics",
        parse=_between(16, 1 << 24),
    )
    cache_slots: int = setting(
        1024,
        "slots per half of the per-CPU flow cache (a power of two; 120 B each, two halves "
        "per possible CPU: 240 KiB per CPU at 1024); packets of a cached flow are counted "
        "without a flow-map lookup. 0 turns the cache off (also done, with one log line, "
        "where membarrier(MEMBARRIER_CMD_GLOBAL) is unavailable)",
        parse=_power_of_two_or_zero,
    )
    tunnel_ports: tuple[int, ...] = setting(
        (4789, 8472, 6081),
        "UDP ports of VXLAN and Geneve tunnels (comma-separated, at most 4): IANA's "
        "VXLAN, Linux's and flannel's / Cilium's VXLAN, Geneve. A tunnel's super-packet "
        "is counted with the inner headers each wire segment repeats (docs/collector.md, "
        "Bytes); empty: none",
        parse=_ports,
    )
    nat_pairing: bool = setting(
        True,
        "join the two one-way halves of a connection NAT'ed on the node (DNAT by "
        "kube-proxy: ClusterIP, NodePort; SNAT: a pod's connection masqueraded on its way "
        "out) into one flow through conntrack (docs/collector.md, NAT pairing); off saves "
        "reading the whole map before rendering it where no NAT happens on the node",
    )


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """In-kernel capture of DNS packets."""

    port: int = setting(
        53, "UDP/TCP port whose packets are captured as DNS", parse=_between(1, 65535)
    )
    capture_bytes: int = setting(
        512,
        "bytes copied per DNS packet from its IP header on; 512 holds a classic UDP "
        "answer; of a longer packet only the answers that fit are kept. At least "
        f"{DNS_CAPTURE_MIN}: the IP, UDP or TCP and DNS headers (114 bytes at most without "
        "IPv6 extension headers) and the question must fit, or the packet is only counted "
        "as a parse error",
        parse=_between(DNS_CAPTURE_MIN, 4096),
    )
    ring_buffer_pages: int = setting(
        64,
        "size of the DNS ring buffer in 4 KiB pages (a power of two); a full buffer "
        "drops packets, counted in flowscope_collector_dns_ringbuf_full_total",
        parse=_power_of_two,
    )


@dataclass(frozen=True, slots=True)
class SocketSettings:
    """Socket owners: the start-up snapshot of connections the hooks never saw."""

    snapshot: bool = setting(
        True,
        "at start-up, report the owners of connections that already existed (read from "
        "/proc, needs CAP_SYS_PTRACE, skipped with one log line without it, and "
        "CAP_DAC_READ_SEARCH for other users' processes), so they do not lose their process "
        "until they reconnect",
    )
    snapshot_max_sockets: int = setting(
        65536,
        "connections the start-up snapshot reports at most (as many as the kernel's owner "
        "map holds); the rest are counted in flowscope_collector_socket_snapshot_skipped_total",
        parse=_between(1, 1 << 24),
    )
    snapshot_timeout: float = setting(
        30.0,
        "seconds the start-up snapshot may take (it runs beside the collector's work, in a "
        "worker thread); what it has not read by then is counted, not reported",
        parse=positive,
    )
    accept_hook: bool = setting(
        False,
        "report a server-side connection with the process that accept()s it (an fexit "
        "program on inet_csk_accept: the worker of a pre-fork server) instead of the "
        "listener's owner; off by default because many kernels refuse fexit programs and "
        "it is untested there (the tracer then falls back, with one log line)",
    )


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """Batching and buffering of raw events on their way to NATS."""

    batch_max_records: int = setting(
        1000,
        "records per message at most (then split further under max payload)",
        parse=_between(1, 1_000_000),
    )
    batch_max_delay: float = setting(
        1.0, "seconds a record may wait for its batch to fill before it is sent", parse=positive
    )
    buffer_bytes: int = setting(
        32 * 1024 * 1024,
        "encoded bytes held per kind while NATS is down or slow; beyond it the oldest "
        "batches are dropped and counted (flowscope_collector_publish_dropped_records_total). "
        f"At least {BUFFER_MIN >> 20} MiB: a drain hands over 4096 flows at once, which "
        "must fit beside the half of the buffer it waits at, or they are dropped while "
        "NATS works",
        parse=_between(BUFFER_MIN, 1 << 34),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the collector can be told."""

    node_name: str = setting(
        "",
        "this node's name in subjects and records (default: env NODE_NAME, else the host name)",
    )
    interfaces: InterfaceSettings = section(InterfaceSettings, "interfaces to attach to")
    flows: FlowSettings = section(FlowSettings, "flow aggregation")
    dns: DnsSettings = section(DnsSettings, "DNS capture")
    sockets: SocketSettings = section(SocketSettings, "socket owners")
    publish: PublishSettings = section(PublishSettings, "publishing to NATS")
    runtime: RuntimeSettings = section(RuntimeSettings, "logs, HTTP endpoint, drain", flat=True)
    nats: NatsSettings = section(NatsSettings, "NATS connection and streams")
