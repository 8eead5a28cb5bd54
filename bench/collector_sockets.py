"""Benchmark: DNS parsing, and what the socket-owner programs cost the traced processes.

Prints, from one run on this machine:
1. DNS parsing: median ns per captured packet for flowscope's parser (IP + UDP + DNS)
   next to dnslib parsing only the DNS message of the same packets (baseline).
2. Socket owners (root only): median µs per loopback TCP connect+accept+close and per
   UDP sendto+recvfrom, without and with the tracer attached (ratio), and each program's
   mean ns per run from the kernel's BPF run-time statistics (BPF_ENABLE_STATS, held
   only for this run, so other users of the machine are not affected).

Run: .venv/bin/python bench/collector_sockets.py
"""

from __future__ import annotations

import ctypes
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dnslib
from flowscope.collector.dns_parsing import parse_packet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' packet builders
from tests.unit.collector import packet_building as pb

ROUNDS = 7


def median_ns(work: Callable[[], int]) -> float:
    """Median over ROUNDS of (elapsed ns / items) for ``work`` (which returns items)."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        items = work()
        samples.append((time.perf_counter_ns() - start) / items)
    return statistics.median(samples)


def dns_packets() -> tuple[list[bytes], list[bytes]]:
    answers = [
        ("www.example.com", "CNAME", 300, "edge.example.net"),
        *[("edge.example.net", "A", 60, f"192.0.2.{i}") for i in range(4)],
        ("edge.example.net", "AAAA", 60, "2001:db8::7"),
    ]
    messages = [pb.query("www.example.com"), pb.response("www.example.com", answers)]
    packets = [pb.ipv4("10.0.0.2", "10.0.0.53", 17, pb.udp(40000, 53, m)) for m in messages]
    return packets * 500, messages * 500


def bench_dns() -> None:
    packets, messages = dns_packets()

    def ours() -> int:
        for packet in packets:
            parse_packet(packet)
        return len(packets)

    def baseline() -> int:
        for message in messages:
            dnslib.DNSRecord.parse(message)
        return len(messages)

    base, mine = median_ns(baseline), median_ns(ours)
    print("DNS parsing (query + 6-answer response, alternating):")
    print(f"  dnslib DNSRecord.parse (DNS only, baseline): {base:8.0f} ns/packet")
    print(f"  flowscope parse_packet (IP+UDP+DNS):        {mine:8.0f} ns/packet")
    print(f"  ratio flowscope/dnslib: {mine / base:.2f}")


def tcp_rounds(n: int) -> Callable[[], int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    address = server.getsockname()

    def work() -> int:
        for _ in range(n):
            client = socket.create_connection(address)
            accepted, _ = server.accept()
            client.close()
            accepted.close()
        return n

    return work


def udp_rounds(n: int) -> Callable[[], int]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = receiver.getsockname()

    def work() -> int:
        for _ in range(n):
            sender.sendto(b"x", address)
            receiver.recvfrom(16)
        return n

    return work


def program_stats(prog_ids: list[int]) -> dict[str, tuple[int, int]]:
    """name → (run_time_ns, run_cnt) from bpf_prog_info (offsets 192/200, UAPI)."""
    from bcc.libbcc import lib

    out = {}
    for prog_id in prog_ids:
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        info = ctypes.create_string_buffer(224)
        size = ctypes.c_uint32(224)
        lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size))
        os.close(fd)
        raw = info.raw
        name = raw[64:80].split(b"\0")[0].decode()
        out[name] = (int.from_bytes(raw[192:200], "little"), int.from_bytes(raw[200:208], "little"))
    return out


def one_round(work: Callable[[], int]) -> float:
    start = time.perf_counter_ns()
    items = work()
    return (time.perf_counter_ns() - start) / items


def bench_sockets() -> None:
    """Rounds alternate without/with the tracer, so machine noise hits both alike."""
    import prometheus_client
    from bcc import BPF
    from bcc.libbcc import lib
    from flowscope.collector import cgroup_links
    from flowscope.collector.containers import ContainerResolver, find_cgroup2_root
    from flowscope.collector.socket_tracing import SocketTracer

    # Baseline for the per-program figures: an empty cgroup skb program on the egress hook,
    # attached for the whole run (so it is in both the "without" and "with" rounds).
    noop = BPF(text=b"int fsb_noop(struct __sk_buff *skb) { return 1; }")
    noop_fd = noop.load_func(b"fsb_noop", BPF.CGROUP_SKB, attach_type=1).fd
    root_fd = os.open(find_cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
    noop_link = cgroup_links.link_create(noop_fd, root_fd, 1)  # BPF_CGROUP_INET_EGRESS
    noop_id = cgroup_links.prog_info(noop_fd).id
    tcp, udp = tcp_rounds(300), udp_rounds(2000)
    registry = prometheus_client.CollectorRegistry()
    tracer = SocketTracer("bench", ContainerResolver(), registry)
    lib.bpf_enable_stats.restype = ctypes.c_int
    stats_fd = lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME, held until closed
    off: dict[str, list[float]] = {"tcp": [], "udp": []}
    on: dict[str, list[float]] = {"tcp": [], "udp": []}
    events = 0
    stats: dict[str, tuple[int, int]] = {}
    try:
        for _ in range(ROUNDS):
            off["tcp"].append(one_round(tcp))
            off["udp"].append(one_round(udp))
            tracer.open()
            on["tcp"].append(one_round(tcp))
            events += len(tracer.poll(0))
            on["udp"].append(one_round(udp))
            events += len(tracer.poll(0)) + len(tracer.poll(0))
            for name, (run_ns, runs) in program_stats([*tracer.program_ids, noop_id]).items():
                total_ns, total_runs = stats.get(name, (0, 0))
                stats[name] = (total_ns + run_ns, total_runs + runs)
            tracer.close()
    finally:
        if stats_fd >= 0:
            os.close(stats_fd)
        tracer.close()
        os.close(noop_link)
        os.close(root_fd)
        noop.cleanup()
    print(f"Socket owners (loopback, this process; median of {ROUNDS} alternating rounds):")
    for kind, label in (("tcp", "TCP connect+accept+close"), ("udp", "UDP sendto+recvfrom")):
        without, with_ = statistics.median(off[kind]), statistics.median(on[kind])
        print(f"  {label:25s} {without / 1e3:7.1f} µs without, {with_ / 1e3:7.1f} µs with "
              f"tracer, ratio {with_ / without:.2f}")  # fmt: skip
    lost = registry.get_sample_value("flowscope_collector_socket_events_lost_total")
    print(f"  events read: {events}, lost (ring buffer full, counted): {lost:.0f}")
    print("  per-program mean ns/run (runs), kernel BPF run-time statistics:")
    for name, (run_ns, runs) in sorted(stats.items()):
        mean = run_ns / runs if runs else 0.0
        print(f"    {name:16s} {mean:7.0f} ns  ({runs} runs)")


if __name__ == "__main__":
    bench_dns()
    if os.geteuid() == 0:
        bench_sockets()
    else:
        print("socket-owner part skipped: needs root")
