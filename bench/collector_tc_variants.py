"""Same-run A/B of TC flow-program variants; prints figures (not a test). Needs root.

    .venv/bin/python bench/collector_tc_variants.py [--rounds 7] [--many] [variant.c ...]

Each variant is a copy of bpf/flows.c (default: bpf/flows.c itself), compiled with the
collector's flags (max_flows 262144, as bench/collector_tc.py) and attached to TC
ingress of both pods' host veths at its own priority, behind bench/collector_tc.py's
minimal baseline program (priority 1), together with ``floor``: a program that only
looks one 40-byte key up in its own hash map of the same size and adds 1 atomically
(key: the IPv4 source address, the rest zero), the least any exact per-flow count in a
hash map costs for a packet of an existing flow (with ``--many`` the floor still sees one
flow: its key has no ports). One UDP flow (``--many``: each packet a new flow) of 200 000 packets per
round, the order of the variants rotated every round; per program the median over the
rounds of kernel.bpf_stats_enabled run_time_ns / run_cnt, and of BPF_PROG_TEST_RUN
(statistics off) for the UDP and TCP ACK frames of bench/collector_tc.py. Every program
sees the same packets, so the machine's load moves all of them together.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import collector_tc as tc  # the baseline, sender, frames and statistics readers
from flowscope.collector.attaching import ETH_P_ALL, PARENT_INGRESS, Attacher
from flowscope.collector.loading import FlowProgramConfig, bpf_dir

from tests.privileged.collector.node import Node

FLOOR = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "flowscope_abi.h"
BPF_TABLE("hash", struct flow_key, struct flow_value, flows, MAX_FLOWS);
int flowscope_ingress(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (data + 34 > data_end)
        return TC_ACT_UNSPEC;
    struct flow_key key = {};
    *(__u32 *)key.addr_lo = *(__u32 *)(data + 26);
    struct flow_value *v = flows.lookup(&key);
    if (v) {
        __sync_fetch_and_add(&v->packets[0], 1);
        return TC_ACT_UNSPEC;
    }
    struct flow_value fresh = {};
    flows.insert(&key, &fresh);
    return TC_ACT_UNSPEC;
}
"""


def two_maps(bpf: object) -> bool:
    """Whether a program has flows.c's two flow maps (``in`` on a bcc object only sees
    the tables already asked for)."""
    try:
        bpf[b"flows_a"]  # type: ignore[index]
    except KeyError:
        return False
    return True


def load(name: str, source: Path | None) -> tuple[str, object, int]:
    """(label, bcc object, ingress program fd) of a variant file, or of FLOOR."""
    from bcc import BPF

    cflags = FlowProgramConfig(max_flows=262144).cflags()
    if source is None:
        bpf = BPF(text=FLOOR, cflags=cflags)
    else:
        bpf = BPF(src_file=str(source).encode(), cflags=cflags)
        if two_maps(bpf):  # flows.c's maps behind its outer array, as the collector
            outer, fd = bpf[b"flows"], bpf[b"flows_a"].map_fd  # sets them up (loading.py)
            for slot, inner in ((1, fd), (2, bpf[b"flows_b"].map_fd), (0, fd)):
                outer[ctypes.c_int(slot)] = ctypes.c_int(inner)
    return name, bpf, bpf.load_func(b"flowscope_ingress", BPF.SCHED_CLS).fd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--many", action="store_true", help="every packet a new flow")
    args = parser.parse_args()
    from bcc import BPF

    sources = args.variants or [bpf_dir() / "flows.c"]
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    stats.write_text("1")
    node = Node(tag=f"tcv{os.getpid()}", ipv6=False).create(pods=2)
    try:
        with node.inside():
            programs = [load(p.stem, p) for p in sources] + [load("floor", None)]
            baseline = BPF(text=tc.BASELINE)
            base_fd = baseline.load_func(b"baseline_in", BPF.SCHED_CLS).fd
            measure(node, programs, base_fd, args.rounds, "many" if args.many else "one")
            for _, bpf, _ in programs:
                bpf.cleanup()  # type: ignore[attr-defined]
            baseline.cleanup()
    finally:
        node.destroy()
        stats.write_text(old)


def measure(
    node: Node, programs: list[tuple[str, object, int]], base_fd: int, rounds: int, mode: str
) -> None:
    """Rounds of traffic and TEST_RUN over every program; prints the medians."""
    attacher = Attacher(0, 0)  # only for its netlink socket (filters added by hand here)
    links = [attacher.ipr.link_lookup(ifname=pod.host_if)[0] for pod in node.pods]
    for index in links:
        attacher.ipr.tc("add", "clsact", index)  # fresh veths: no qdisc yet
    fds = {name: fd for name, _, fd in programs} | {"baseline": base_fd}
    traffic: dict[str, list[float]] = {name: [] for name in fds}
    runs: dict[tuple[str, int], list[int]] = {(n, p): [] for n in fds for p in (17, 6)}
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    for r in range(rounds):
        order = programs[r % len(programs) :] + programs[: r % len(programs)]
        chain = [("baseline", base_fd)] + [(name, fd) for name, _, fd in order]
        for index in links:
            for prio, (name, fd) in enumerate(chain, start=tc.BASELINE_PRIO):
                attacher.ipr.tc("add-filter", "bpf", index, 1, fd=fd, name=name,
                                parent=PARENT_INGRESS, prio=prio, protocol=ETH_P_ALL,
                                classid=1, direct_action=True)  # fmt: skip
        before = {name: tc.prog_stats(fd) for name, fd in fds.items()}
        tc.send(node, mode, 200_000)
        for name, fd in fds.items():
            t, n = (a - b for a, b in zip(tc.prog_stats(fd), before[name], strict=True))
            traffic[name].append(t / n if n else 0.0)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {traffic[n][-1]:.1f}" for n, _ in chain))
        for index in links:
            for prio in range(tc.BASELINE_PRIO, tc.BASELINE_PRIO + len(chain)):
                attacher.ipr.tc("del-filter", "bpf", index, 1, parent=PARENT_INGRESS,
                                prio=prio, protocol=ETH_P_ALL)  # fmt: skip
        for _, bpf, _ in programs:
            for table in (b"flows_a", b"flows_b") if two_maps(bpf) else (b"flows",):
                bpf[table].clear()  # type: ignore[index]
        stats.write_text("0")
        for proto in (17, 6):
            frame = tc.frame(proto)
            for name, fd in fds.items():
                runs[(name, proto)].append(tc.test_run_ns(fd, frame, 200_000))
        stats.write_text("1")
    attacher.close()
    base = statistics.median(traffic["baseline"])
    print(f"== TC ingress, {mode} flow(s), medians of {rounds} rounds (bpf_stats ns/packet; "
          "BPF_PROG_TEST_RUN ns/run UDP / TCP ACK)")  # fmt: skip
    for name, values in traffic.items():
        ns = statistics.median(values)
        udp, ack = (statistics.median(runs[(name, p)]) for p in (17, 6))
        print(f"  {name:>12}: {ns:6.1f} ns/pkt, ratio {ns / base:.2f}x, +{ns - base:5.1f} ns "
              f"(range {min(values):.1f}-{max(values):.1f}); TEST_RUN {udp:.0f} / {ack:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
