"""Benchmark of the collector's flow path; prints figures (not a test). Needs root.

    .venv/bin/python bench/collector_tc.py [--packets 200000] [--seconds 10]
                                           [--kernel-only | --process-only]

1. ns/packet of the TC programs (kernel.bpf_stats_enabled, run_time_ns / run_cnt from
   the program fd's fdinfo) next to a minimal counting TC program attached to the same
   hooks in the same run (baseline), for one flow and for many flows; and the same
   comparison with BPF_PROG_TEST_RUN (one packet run in a loop in the kernel: no sender,
   softirq or statistics noise; x86-64 syscall number).
2. Packets counted vs the interface's own counters at the highest rate one Python
   sender reaches here.
3. The collector process's CPU (% of one core) and RSS while new flows arrive at 10k/s
   and 50k/s (each packet a new 5-tuple), with socket tracing and DNS reading on.

Everything runs in network namespaces built as in the privileged tests
(tests/privileged/collector/node.py); nothing touches the host's interfaces.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import re
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowscope.collector.attaching import ETH_P_ALL, PARENT_EGRESS, PARENT_INGRESS, Attacher
from flowscope.collector.draining import BatchReader, DirectionMemory, Drainer, TickClock
from flowscope.collector.loading import FlowProgramConfig, load_flow_program
from flowscope.collector.metrics import read_counters

from tests.privileged.collector.collector_process import CollectorProcess
from tests.privileged.collector.node import Node, sh
from tests.support import nats_server

BASELINE = r"""
BPF_PERCPU_ARRAY(seen, u64, 2);
static __always_inline int count(int slot) {
    u64 *n = seen.lookup(&slot);
    if (n)
        *n += 1;
    return -1; /* TC_ACT_UNSPEC: let the next filter (flowscope's) run too */
}
int baseline_in(struct __sk_buff *skb) { return count(0); }
int baseline_eg(struct __sk_buff *skb) { return count(1); }
"""
BASELINE_PRIO = 1  # runs before flowscope's filter on the same hook
SYS_BPF = 321  # x86-64
BPF_PROG_TEST_RUN = 10

SENDER = r"""
import socket, sys, time
addr, mode, total, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
payload = b"x" * 64
sent, start = 0, time.monotonic()
while sent < total:
    if mode == "one":
        socks[0].sendto(payload, (addr, 9000))
    else:  # every packet a new 5-tuple: 8 source sockets x 60000 destination ports
        socks[sent % 8].sendto(payload, (addr, 1024 + (sent // 8) % 60000))
    sent += 1
    if rate and sent % 100 == 0:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(sent / (time.monotonic() - start))
"""


class TestRunAttr(ct.Structure):
    """``union bpf_attr`` for BPF_PROG_TEST_RUN (the ``test`` member)."""

    _fields_ = [
        ("prog_fd", ct.c_uint32), ("retval", ct.c_uint32), ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32), ("data_in", ct.c_uint64), ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32), ("duration", ct.c_uint32), ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32), ("ctx_in", ct.c_uint64), ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]  # fmt: skip


def test_run_ns(fd: int, frame: bytes, repeat: int) -> int:
    """Mean ns per run of a TC program on ``frame`` (BPF_PROG_TEST_RUN, in this thread)."""
    data = ct.create_string_buffer(frame, len(frame))
    out = ct.create_string_buffer(len(frame) + 256)
    attr = TestRunAttr(prog_fd=fd, data_size_in=len(frame), data_in=ct.addressof(data),
                       data_out=ct.addressof(out), data_size_out=len(out), repeat=repeat)  # fmt: skip
    libc = ct.CDLL(None, use_errno=True)
    if libc.syscall(SYS_BPF, BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) != 0:
        raise OSError(ct.get_errno(), "BPF_PROG_TEST_RUN")
    return int(attr.duration)


def frame(proto: int) -> bytes:
    """Ethernet + IPv4 + UDP or TCP (ACK) + 64 bytes: a packet of one existing flow."""
    payload = b"x" * 64
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", 40000, 9000, 1, 1, 5 << 4, 0x10, 100, 0, 0)
    else:
        l4 = struct.pack("!HHHH", 40000, 9000, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 1, 0, 64, proto,
                     0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4 + payload


def per_run(program: object, base_in: int) -> None:
    """The programs' own cost, free of sender and softirq noise: the same packet run
    200 000 times in the kernel, flowscope and the baseline alternating, 7 rounds."""
    print("== TC ingress cost without traffic (BPF_PROG_TEST_RUN, median of 7 x 200k runs,")
    print("   run-time statistics off: they add to every run)")
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats.write_text("0")
    try:
        run_both(program, base_in)
    finally:
        stats.write_text("1")


def run_both(program: object, base_in: int) -> None:
    for proto, name in ((17, "UDP"), (6, "TCP ACK")):
        packet = frame(proto)
        ours, base = [], []
        for _ in range(7):
            ours.append(test_run_ns(program.ingress_fd, packet, 200_000))  # type: ignore[attr-defined]
            base.append(test_run_ns(base_in, packet, 200_000))
        o, b = statistics.median(ours), statistics.median(base)
        print(f"  {name:>7}, existing flow: flowscope {o:5.1f} ns/run, baseline {b:5.1f} ns/run, "
              f"ratio {o / b:.2f}x, difference {o - b:.0f} ns")  # fmt: skip


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a BPF program from its fd's fdinfo."""
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    run_time = re.search(r"run_time_ns:\s+(\d+)", text)
    run_cnt = re.search(r"run_cnt:\s+(\d+)", text)
    return int(run_time.group(1)) if run_time else 0, int(run_cnt.group(1)) if run_cnt else 0


def send(node: Node, mode: str, total: int, rate: float = 0) -> float:
    pod, peer = node.pods[0], node.pods[1]
    out = sh("ip", "netns", "exec", pod.ns, sys.executable, "-c", SENDER, peer.ip4, mode,
             str(total), str(rate))  # fmt: skip
    return float(out.strip())


def host_counter(node: Node, ifname: str, name: str) -> int:
    return int(node.hx("cat", f"/sys/class/net/{ifname}/statistics/{name}").strip())


def attach_baseline(node: Node) -> tuple[object, int, int]:
    from bcc import BPF

    bpf = BPF(text=BASELINE)
    fin = bpf.load_func(b"baseline_in", BPF.SCHED_CLS)
    feg = bpf.load_func(b"baseline_eg", BPF.SCHED_CLS)
    attacher = Attacher(fin.fd, feg.fd)
    for pod in node.pods:
        (index,) = attacher.ipr.link_lookup(ifname=pod.host_if)
        for parent, fd in ((PARENT_INGRESS, fin.fd), (PARENT_EGRESS, feg.fd)):
            attacher.ipr.tc("add-filter", "bpf", index, 1, fd=fd, name="baseline",
                            parent=parent, prio=BASELINE_PRIO, protocol=ETH_P_ALL, classid=1,
                            direct_action=True)  # fmt: skip
    attacher.close()
    return bpf, fin.fd, feg.fd


def per_packet(node: Node, packets: int) -> None:
    print("== TC program cost (ns/packet, kernel.bpf_stats_enabled)")
    with node.inside():
        program = load_flow_program(FlowProgramConfig(max_flows=262144))
        attacher = Attacher(program.ingress_fd, program.egress_fd)
        for pod in node.pods:
            (index,) = attacher.ipr.link_lookup(ifname=pod.host_if)
            attacher.attach(index, pod.host_if)
        baseline_bpf, base_in, base_eg = attach_baseline(node)
        drainer = Drainer(
            BatchReader(program.flows.map_fd),
            TickClock(program.clock_pair),
            "bench",
            3.0,
            DirectionMemory(1024),
        )
        try:
            for mode in ("one", "many"):
                drainer.drain()
                fds = {"flowscope ingress": program.ingress_fd, "baseline ingress": base_in,
                       "flowscope egress": program.egress_fd, "baseline egress": base_eg}  # fmt: skip
                before = {label: prog_stats(fd) for label, fd in fds.items()}
                rate = send(node, mode, packets)
                ns = {}
                for label, fd in fds.items():
                    t, n = (a - b for a, b in zip(prog_stats(fd), before[label], strict=True))
                    ns[label] = (t / n if n else 0.0, n)
                print(
                    f"  {mode} flow(s) {'(each packet a new flow)' if mode == 'many' else ''}, "
                    f"sender {rate:,.0f} pkt/s"
                )
                for hook in ("ingress", "egress"):
                    ours, base = ns[f"flowscope {hook}"], ns[f"baseline {hook}"]
                    print(f"    {hook:>7}: flowscope {ours[0]:6.1f} ns/pkt, baseline {base[0]:6.1f} "
                          f"ns/pkt, ratio {ours[0] / base[0]:.2f}x ({ours[1]} runs)")  # fmt: skip
            per_run(program, base_in)
            drain_cost(node, drainer, packets)
            accuracy(node, program, drainer, packets)
        finally:
            attacher.detach_all()
            attacher.close()
            baseline_bpf.cleanup()  # type: ignore[attr-defined]
            program.close()


def drain_cost(node: Node, drainer: Drainer, packets: int) -> None:
    """User-space cost per flow of the flow path: drain, convert, encode to NDJSON bodies
    (the drain renders NDJSON lines itself since collector-cpu; before, it built wire
    dicts that codec.encode_chunks encoded: the same work from map to message body)."""
    from flowscope.core import codec

    print("== flow path in user space (drain + NDJSON lines + message bodies), per flow")
    drainer.drain()
    send(node, "many", packets)
    encoded = 0

    def sink(lines: list[bytes]) -> None:
        nonlocal encoded
        encoded += sum(b.count for b in codec.chunk_lines(codec.RAW_FLOW, lines, 1 << 20))

    cpu0, t0 = time.process_time(), time.perf_counter()
    entries = drainer.drain_into(sink)
    cpu1, t1 = time.process_time(), time.perf_counter()
    per_flow = (cpu1 - cpu0) / max(1, entries) * 1e6
    print(f"  {entries} flows in {t1 - t0:.2f} s: {per_flow:.2f} us CPU per flow "
          f"= {per_flow * 1e4 / 1e6 * 100:.1f}% of a core at 10k flows/s, "
          f"{per_flow * 5e4 / 1e6 * 100:.1f}% at 50k/s (encoded {encoded})")  # fmt: skip


def accuracy(node: Node, program: object, drainer: Drainer, packets: int) -> None:
    print("== packets counted vs interface counters (one UDP flow, sender flat out)")
    veth = node.pods[0].host_if
    drainer.drain()
    before_lost = read_counters(program.counters)  # type: ignore[attr-defined]
    rx0 = host_counter(node, veth, "rx_packets")
    rate = send(node, "one", packets)
    time.sleep(0.2)
    rx1 = host_counter(node, veth, "rx_packets")
    flows = drainer.drain().flows
    counted = sum(f.packets for f in flows if f.src == node.pods[0].ip4 and f.proto == 17)
    lost = read_counters(program.counters).map_full_packets - before_lost.map_full_packets  # type: ignore[attr-defined]
    print(f"  sender {rate:,.0f} pkt/s; {veth} rx_packets +{rx1 - rx0}; counted {counted} "
          f"({100 * counted / max(1, rx1 - rx0):.2f}%), map-full {lost}")  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]
    return rss, hwm


def collector_load(node: Node, seconds: float) -> None:
    print("== collector process: CPU % of one core and RSS under new flows")
    with node.inside():
        server = nats_server.start()
        collector = CollectorProcess(server.url, node.host, extra=[
            "--flows-active-timeout", "5", "--flows-max-entries", "524288",
        ])  # fmt: skip
    try:
        with node.inside():
            collector.start()
        assert collector.proc is not None
        pid = collector.proc.pid
        time.sleep(3)
        for rate in (10_000, 50_000):
            total = int(rate * seconds)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            achieved = send(node, "many", total, rate)
            time.sleep(5.5)  # let the drain of the last interval happen inside the window
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            rss, hwm = rss_mb(pid)
            drained = collector.metric("flowscope_collector_flows_drained_total")
            lost = collector.metric("flowscope_collector_map_full_packets_total")
            sockets = collector.metric("flowscope_collector_socket_events_total")
            dropped = collector.metric("flowscope_collector_publish_dropped_records_total")
            lookups = collector.metric("flowscope_collector_nat_lookups_total")
            print(f"  target {rate:,}/s (achieved {achieved:,.0f}/s): CPU {100 * (cpu1 - cpu0) / (t1 - t0):.1f}% "
                  f"of one core over {t1 - t0:.1f} s; RSS {rss:.0f} MB (peak {hwm:.0f} MB); "
                  f"so far: flows drained {drained:,.0f}, socket events {sockets:,.0f}, "
                  f"map-full packets {lost:,.0f}, records dropped {dropped:,.0f}, "
                  f"conntrack lookups {lookups:,.0f}")  # fmt: skip
    finally:
        collector.stop()
        collector.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--kernel-only", action="store_true", help="skip the collector process part"
    )
    parser.add_argument(
        "--process-only", action="store_true", help="only the collector process part"
    )
    args = parser.parse_args()
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    stats.write_text("1")
    node = Node(tag=f"cfb{os.getpid()}", ipv6=False).create(pods=2)
    try:
        if not args.process_only:
            per_packet(node, args.packets)
        if not args.kernel_only:
            collector_load(node, args.seconds)
    finally:
        node.destroy()
        stats.write_text(old)


if __name__ == "__main__":
    main()
