"""How long the collector's event loop stalls while a burst of interfaces is attached;
prints figures (not a test). Needs root.

    .venv/bin/python bench/collector_attach_lag.py [--pairs 100] [--rounds 5]

A namespace of its own with ``--pairs`` veth pairs (200 interfaces by default, about a
full node's pods) and a tiny TC classifier standing in for the flow program. Per round,
a :class:`LinkWatcher` with the real :class:`Attacher` takes one RTM_NEWLINK event per
interface, as after a burst of pod creations, while a ticker task on the same loop
sleeps 1 ms at a time and records its longest wait: the loop's longest stall, which
ring-buffer reads, drains and NATS traffic would have waited too. Two ways, alternating
within each round (the machine's load moves both alike):

- ``off the loop``: ``LinkWatcher.catch_up``, the collector's way (a worker thread);
- ``on the loop``: the same events applied on the loop's thread, the way before it.

Printed per way: medians over the rounds of the longest stall and of the time until all
interfaces are attached; and the ratio of the stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowscope.collector.attaching import Attacher
from flowscope.collector.link_watching import (
    InterfaceSelection,
    LinkEvent,
    LinkWatcher,
    listed_links,
)
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import netns

PREFIX = "alag"


async def ticking(done: asyncio.Event) -> float:
    """The longest a 1 ms sleep took on this loop until ``done`` (seconds)."""
    loop = asyncio.get_running_loop()
    longest = 0.0
    while not done.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        longest = max(longest, loop.time() - before)
    return longest


async def one(fd: int, events: list[LinkEvent], off_loop: bool) -> tuple[float, float]:
    """(longest stall, seconds until every interface is attached) for one way."""
    attacher = Attacher(fd, fd)
    watcher = LinkWatcher(
        attacher, InterfaceSelection(include=(f"{PREFIX}*",)),
        CollectorMetrics.create(CollectorRegistry()),
    )  # fmt: skip
    done = asyncio.Event()
    ticker = asyncio.create_task(ticking(done))
    await asyncio.sleep(0.01)  # the ticker is running
    started = time.perf_counter()
    if off_loop:
        await watcher.catch_up(list(events))
    else:
        for event in events:
            watcher.apply(event)
    took = time.perf_counter() - started
    done.set()
    stall = await ticker
    assert len(attacher.attached) == len(events), "not every interface attached"
    await asyncio.to_thread(attacher.detach_all)
    attacher.close()
    return stall, took


async def measure(fd: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    events = [e for e in listed_links() if e.name.startswith(PREFIX)]
    ways: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "off the loop": lambda: one(fd, events, True),
        "on the loop": lambda: one(fd, events, False),
    }
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for name in order:
            figures[name].append(await ways[name]())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100, help="veth pairs (2 interfaces each)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ns = f"{PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        batch = "".join(
            f"link add {PREFIX}{i}a type veth peer name {PREFIX}{i}b\n" for i in range(args.pairs)
        )
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
        from bcc import BPF

        with netns(ns):
            bpf = BPF(text=b"int keep(struct __sk_buff *skb) { return 0; }")
            fd = bpf.load_func(b"keep", BPF.SCHED_CLS).fd
            figures = asyncio.run(measure(fd, args.rounds))
        bpf.cleanup()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    print(f"{2 * args.pairs} interfaces attached at once, {args.rounds} rounds (medians)")
    medians = {}
    for name, runs in figures.items():
        stall = statistics.median(s for s, _ in runs)
        took = statistics.median(t for _, t in runs)
        medians[name] = stall
        each = " / ".join(f"{s * 1e3:.1f}" for s, _ in runs)
        print(
            f"  {name:13}  longest loop stall {stall * 1e3:7.1f} ms  (rounds: {each})   "
            f"all attached in {took * 1e3:6.1f} ms"
        )
    ratio = medians["on the loop"] / medians["off the loop"]
    print(f"  the loop's longest stall, off the loop against on it: 1/{ratio:.0f}")


if __name__ == "__main__":
    main()
