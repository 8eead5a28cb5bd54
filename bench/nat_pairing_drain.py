"""The drain's CPU per entry with and without NAT pairing (not a test: prints figures).

    .venv/bin/python bench/nat_pairing_drain.py [--entries 250000] [--runs 7]

In process, no kernel: the map's chunks (4096 entries each) come from memory, shaped like
``bench/collector_tc.py --process-only``'s 50 k/s drain — one-way UDP flows from 8 source
sockets of one pod to many ports of another, so no entry shares an end with another and
pairing must make no lookup (the conntrack seam here fails if asked). Runs alternate
(off, on, off, …) and medians of CPU time (``process_time``) per entry are printed, plus
the prefilter alone.

A second line (``--pairs``, 0 to skip) adds the one-way halves of that many NAT'ed TCP
connections to the same chunks, spread over them as hash order would, once DNAT'ed
(client → Service, backend → client) and once SNAT'ed (pod → outside, outside → node),
with a conntrack seam answering from a table by either direction as the kernel does,
and prints the drain's extra CPU over the same drain without them, for 1 and for
``--pairs`` pairs (what a drain costs once anything is to be paired).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowscope.collector import abi
from flowscope.collector.conntrack import Answer, CtTuple
from flowscope.collector.draining import DirectionMemory, Drainer
from flowscope.collector.nat_pairing import NatPairing

CHUNK = 4096


class Chunks:
    def __init__(self, chunks: list[tuple[bytes, bytes]]) -> None:
        self._chunks = chunks

    def chunks(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self._chunks


class Clock:
    tick_ns = 1

    def pair(self) -> tuple[int, int]:
        return 0, 0


class NeverAsked:
    def lookup_many(self, origs: Sequence[CtTuple]) -> list[Answer]:
        raise AssertionError("the benchmark's workload must cause no lookup")


class Table:
    """Conntrack as a table of original → reply tuples, found by either direction."""

    def __init__(self, entries: dict[CtTuple, CtTuple]) -> None:
        self.entries = entries
        self.by_reply = {reply: orig for orig, reply in entries.items()}

    def lookup_many(self, origs: Sequence[CtTuple]) -> list[Answer]:
        out = []
        for asked in origs:
            if asked in self.entries:
                out.append(Answer(0, self.entries[asked], asked))
            elif asked in self.by_reply:
                out.append(Answer(0, asked, self.by_reply[asked]))
            else:
                out.append(Answer(0, errno=2))
        return out


def _one_way(src: bytes, sport: int, dst: bytes, dport: int) -> tuple[bytes, bytes]:
    """A TCP flow entry with packets from ``src`` only (ends in the key's order)."""
    (lo, lport), (hi, hport) = sorted([(src + bytes(12), sport), (dst + bytes(12), dport)])
    sender_lo = (lo, lport) == (src + bytes(12), sport)
    key = abi.FLOW_KEY.pack(lo, hi, lport, hport, 6, abi.AF_INET, b"\0\0")
    counts = (3, 0, 300, 0) if sender_lo else (0, 3, 0, 300)
    value = abi.FLOW_VALUE.pack(100, 200, *counts, 0x10, 3, 0 if sender_lo else 1, 0, b"\0\0")
    return key, value


def with_pairs(
    chunks: list[tuple[bytes, bytes]], pairs: int, snat: bool
) -> tuple[list[tuple[bytes, bytes]], Table]:
    """``chunks`` with the two halves of ``pairs`` NAT'ed connections appended, spread
    over the chunks; and the conntrack table that knows them."""
    pod, other, node = (socket.inet_aton(a) for a in ("10.203.0.12", "10.203.0.13", "10.0.0.1"))
    far, vip = socket.inet_aton("203.0.113.9"), socket.inet_aton("10.96.0.10")
    halves, table = [], {}
    for i in range(pairs):
        if snat:  # pod → outside, outside → the node's translated port
            halves += [_one_way(pod, 40000 + i, far, 443), _one_way(far, 443, node, 20000 + i)]
            table[CtTuple(6, pod, far, 40000 + i, 443)] = CtTuple(6, far, node, 443, 20000 + i)
        else:  # pod → Service, backend → pod
            halves += [_one_way(pod, 40000 + i, vip, 80), _one_way(other, 8080, pod, 40000 + i)]
            table[CtTuple(6, pod, vip, 40000 + i, 80)] = CtTuple(6, other, pod, 8080, 40000 + i)
    per = len(halves) // len(chunks) + 1
    out = []
    for n, (keys, values) in enumerate(chunks):
        part = halves[n * per : (n + 1) * per]
        out.append((keys + b"".join(k for k, _ in part), values + b"".join(v for _, v in part)))
    return out, Table(table)


def paired_extra_ms(chunks: list[tuple[bytes, bytes]], n: int, pairs: int, snat: bool) -> float:
    """CPU ms of one drain of ``chunks`` plus ``pairs`` NAT'ed connections, less the same
    drain without them (one run each)."""
    plain = drain_ns(chunks, n, NatPairing(NeverAsked())) * n
    mixed, table = with_pairs(chunks, pairs, snat)
    pairing = NatPairing(table)
    drainer = Drainer(
        Chunks(mixed), Clock(), "node", 3.0, DirectionMemory(1 << 20), pairing=pairing
    )  # type: ignore[arg-type]
    start = time.process_time()
    lines = sum(len(part) for part in drainer.drain_chunks())
    spent = (time.process_time() - start) * 1e9
    assert lines == n + pairs and pairing.take_tally().pairs == pairs
    return (spent - plain) / 1e6


def workload(n: int) -> list[tuple[bytes, bytes]]:
    a = socket.inet_aton("10.203.0.10") + bytes(12)
    b = socket.inet_aton("10.203.0.11") + bytes(12)
    keys = b"".join(
        abi.FLOW_KEY.pack(a, b, 40000 + i % 8, 1024 + i % 60000, 17, abi.AF_INET, b"\0\0")
        for i in range(n)
    )
    values = b"".join(
        abi.FLOW_VALUE.pack(100 + i % 50, 200 + i % 50, 1, 0, 92, 0, 0, 3, 0, 0, b"\0\0")
        for i in range(n)
    )
    ks, vs = abi.FLOW_KEY.size, abi.FLOW_VALUE.size
    return [(keys[i * ks : (i + CHUNK) * ks], values[i * vs : (i + CHUNK) * vs])
            for i in range(0, n, CHUNK)]  # fmt: skip


def drain_ns(chunks: list[tuple[bytes, bytes]], n: int, pairing: NatPairing | None) -> float:
    drainer = Drainer(
        Chunks(chunks), Clock(), "node", 3.0, DirectionMemory(1 << 20), pairing=pairing
    )  # type: ignore[arg-type]
    start = time.process_time()
    lines = sum(len(part) for part in drainer.drain_chunks())
    assert lines == n
    return (time.process_time() - start) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=250_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    chunks = workload(args.entries)
    off, on, gate = [], [], []
    for _ in range(args.runs):
        off.append(drain_ns(chunks, args.entries, None))
        on.append(drain_ns(chunks, args.entries, NatPairing(NeverAsked())))
        pairing = NatPairing(NeverAsked())
        start = time.process_time()
        assert not any(pairing.candidates(chunks))
        gate.append((time.process_time() - start) / args.entries * 1e9)
    print(f"drain CPU per entry, {args.entries:,} one-way entries, medians of {args.runs}: "
          f"pairing off {statistics.median(off):.0f} ns, on {statistics.median(on):.0f} ns; "
          f"prefilter alone {statistics.median(gate):.0f} ns")  # fmt: skip
    if args.pairs:
        extra = {}
        for kind, pairs in (("DNAT", 1), ("SNAT", 1), ("DNAT", args.pairs), ("SNAT", args.pairs)):
            runs = [paired_extra_ms(chunks, args.entries, pairs, kind == "SNAT")
                    for _ in range(args.runs)]  # fmt: skip
            extra[kind, pairs] = statistics.median(runs)
        print(f"with NAT'ed connections among them, extra drain CPU, medians of {args.runs}: "
              + ", ".join(f"{pairs:,} {kind} {ms:+.1f} ms" for (kind, pairs), ms in extra.items()))  # fmt: skip


if __name__ == "__main__":
    main()
