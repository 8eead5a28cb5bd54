"""The drain's CPU per entry with and without NAT pairing (not a test: prints figures).

    .venv/bin/python bench/nat_pairing_drain.py [--entries 250000] [--runs 7]

In process, no kernel: the map's chunks (4096 entries each) come from memory, shaped like
``bench/collector_tc.py --process-only``'s 50 k/s drain — one-way UDP flows from 8 source
sockets of one pod to many ports of another, so no entry shares an end with another and
pairing must make no lookup (the conntrack seam here fails if asked). Runs alternate
(off, on, off, …) and medians of CPU time (``process_time``) per entry are printed, plus
the prefilter alone.
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


if __name__ == "__main__":
    main()
