"""Read the kernel's per-CPU flow cache at each drain (docs/collector.md, "Flow cache").

The flow program counts a packet of a recently seen flow in a per-CPU cache slot (two
halves, one per generation) instead of the flow map, and moves a slot into the map only
when another flow takes it over. At each drain :meth:`FlowCache.advance` increments the
generation, so programs starting from then on count into the other half, and waits with
``membarrier(MEMBARRIER_CMD_GLOBAL)`` until every program run that read the old
generation has finished; :meth:`FlowCache.take` then reads the old half of every CPU,
which nothing writes any more, and sums each flow's slots into one value.
:func:`merge_values` joins such a value with the map entry of the same flow drained in
the same drain, so a flow is still one record per interval.

Why membarrier is enough: ``MEMBARRIER_CMD_GLOBAL`` calls ``synchronize_rcu()`` when more
than one CPU is online (kernel/sched/membarrier.c), and since the RCU flavours were
consolidated (Linux 4.20, Documentation/RCU/Design/Requirements/Requirements.rst,
"Consolidated RCU") a grace period also waits for every region that runs with bottom
halves or preemption disabled. TC programs run in such regions: ingress inside
``__netif_receive_skb_core``'s ``rcu_read_lock()`` in softirq, egress inside
``__dev_queue_xmit``'s ``rcu_read_lock_bh()`` (the kernel frees BPF programs and maps
after a grace period for the same reason). The one case it does not cover is a single
online CPU on a PREEMPT_RT kernel, where the syscall skips the grace period and a
bottom-half section can be preempted; there the collector runs without the cache.
"""

from __future__ import annotations

import ctypes as ct
import errno
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

from flowscope.collector import abi

log = logging.getLogger("flowscope.collector.cache_reading")

SYS_MEMBARRIER = {"x86_64": 324, "aarch64": 283}
MEMBARRIER_CMD_QUERY = 0
MEMBARRIER_CMD_GLOBAL = 1
FIRST_GENERATION = 2  # 0 means "no user space": the program then counts in the map only

# A slot's bytes: key and value as the flow map's (one struct each), the generation, and
# the first packet's bpf_ktime_get_ns.
SLOT = struct.Struct(f"<{abi.FLOW_KEY.size + abi.FLOW_VALUE.size}sQQ")
KEY_SIZE = abi.FLOW_KEY.size
V_FIRST, V_LAST, V_PKT0, V_PKT1, V_BYTES0, V_BYTES1, V_FLAGS, V_IFINDEX, V_FWD, V_INIT = range(10)


def _libc() -> Any:
    return ct.CDLL(None, use_errno=True)


def membarrier_global_available() -> bool:
    """Whether ``membarrier(MEMBARRIER_CMD_GLOBAL)`` waits for running TC programs here.

    The query leaves GLOBAL out where the kernel cannot offer it (nohz_full CPUs); with
    one online CPU on a PREEMPT_RT kernel the command skips the grace period (module
    docstring), so that counts as unavailable too.
    """
    number = SYS_MEMBARRIER.get(os.uname().machine)
    if number is None:
        return False
    mask = _libc().syscall(number, MEMBARRIER_CMD_QUERY, 0)
    if mask < 0 or not mask & MEMBARRIER_CMD_GLOBAL:
        return False
    realtime = Path("/sys/kernel/realtime")
    return not (realtime.exists() and os.cpu_count() == 1)


def membarrier_global() -> None:
    """Wait for an RCU grace period (see the module docstring); OSError if refused."""
    number = SYS_MEMBARRIER[os.uname().machine]
    if _libc().syscall(number, MEMBARRIER_CMD_GLOBAL, 0) != 0:
        err = ct.get_errno()
        raise OSError(err, f"membarrier(MEMBARRIER_CMD_GLOBAL): {os.strerror(err)}")


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many values a per-CPU map holds per key (the kernel's possible CPUs)."""
    count = 0
    for part in Path(path).read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def merge_values(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two parts of one flow's interval (unpacked ``FLOW_VALUE`` tuples) as one, as the
    kernel would have combined their packets in one map entry.

    Counters add, flags join; first/last are the earliest and latest; the interface is
    the earlier part's (the first packet's). Forward is the SYN sender's when a part saw
    the initiator (the later of two such parts, as the kernel's later SYN overwrites it),
    else the earlier part's first packet's. Ties keep ``a``'s: pass the part whose first
    packet came first as ``a`` when the ticks cannot tell (:func:`merge_cpus`); a map entry
    is ``a`` next to a cached part (docs/collector.md, "Flow cache": direction).
    """
    earlier = b if b[V_FIRST] < a[V_FIRST] else a
    if a[V_INIT] and b[V_INIT]:
        direction = b if b[V_LAST] > a[V_LAST] else a
    elif a[V_INIT] or b[V_INIT]:
        direction = a if a[V_INIT] else b
    else:
        direction = earlier
    return (
        min(a[V_FIRST], b[V_FIRST]),
        max(a[V_LAST], b[V_LAST]),
        a[V_PKT0] + b[V_PKT0],
        a[V_PKT1] + b[V_PKT1],
        a[V_BYTES0] + b[V_BYTES0],
        a[V_BYTES1] + b[V_BYTES1],
        a[V_FLAGS] | b[V_FLAGS],
        earlier[V_IFINDEX],
        direction[V_FWD],
        direction[V_INIT],
        b"\0\0",
    )


def merge_cpus(parts: list[tuple[int, tuple[Any, ...]]]) -> tuple[Any, ...]:
    """One flow's slots on several CPUs ((first packet's ns, FLOW_VALUE tuple) each) as
    one value, merged in the order their first packets came (ticks are too coarse for
    that: a request and its response on two CPUs usually share one)."""
    if len(parts) == 1:
        return parts[0][1]
    parts.sort(key=lambda part: part[0])
    merged = parts[0][1]
    for _, value in parts[1:]:
        merged = merge_values(merged, value)
    return merged


def last_words(cached: dict[bytes, tuple[Any, ...]]) -> set[int]:
    """The last 8-byte word of each cached key (ports, protocol, family): the prefilter
    :func:`merge_chunk` tests a whole chunk against at C speed."""
    return {int.from_bytes(key[KEY_SIZE - 8 :], "little") for key in cached}


def merge_chunk(
    keys: bytes, values: bytes, cached: dict[bytes, tuple[Any, ...]], words: set[int]
) -> bytes:
    """``values`` of a drained map chunk with the cached part of each of its flows added
    (taken out of ``cached``); the same bytes object when none of them has one.

    ``words``: :func:`last_words` of ``cached`` (a superset is fine). Most chunks share
    no flow with the cache; one set test over each key's last word (a strided memoryview
    of the keys, no Python code per entry: ~20 ns an entry, slicing every key out was
    ~85) says so, and only a chunk that may share one is searched entry by entry.
    """
    tags = memoryview(keys).cast("Q")[KEY_SIZE // 8 - 1 :: KEY_SIZE // 8]
    if words.isdisjoint(tags):
        return values
    out: bytearray | None = None
    unpack, pack_into = abi.FLOW_VALUE.unpack_from, abi.FLOW_VALUE.pack_into
    vsize = abi.FLOW_VALUE.size
    for index, tag in enumerate(tags):
        if tag not in words:
            continue
        part = cached.pop(keys[index * KEY_SIZE : (index + 1) * KEY_SIZE], None)
        if part is not None:
            out = bytearray(values) if out is None else out
            at = index * vsize
            pack_into(out, at, *merge_values(unpack(out, at), part))
    return values if out is None else bytes(out)


class FlowCache:
    """User space's side of the kernel flow cache: the generation and the old half.

    ``advance()`` then ``take()`` at every drain, in that order; ``advance`` blocks for an
    RCU grace period (a few ms), so the collector runs it in a worker thread.
    """

    def __init__(self, cache_fd: int, generation_fd: int, slots: int, cpus: int) -> None:
        from bcc.libbcc import lib  # the BPF syscall wrapper bcc itself uses

        self._lib = lib
        self._fd = cache_fd
        self.slots = slots
        self._cpus = cpus
        # One aligned 8-byte store (ctypes writes a c_uint64 with one move) through the
        # map's shared page: the program never sees a half-written generation.
        self._page = mmap.mmap(generation_fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self._generation = ct.c_uint64.from_buffer(self._page)
        self._generation.value = FIRST_GENERATION
        self._pending: int | None = None  # the generation advance() retired, until take()
        self._values = ct.create_string_buffer(SLOT.size * cpus * slots)
        self._keys = (ct.c_uint32 * slots)()

    @property
    def pending(self) -> bool:
        """Whether advance() retired a generation that take() has not read yet."""
        return self._pending is not None

    def advance(self) -> None:
        """Switch the program to the other half and wait until no run uses the old one."""
        old = self._generation.value
        self._generation.value = old + 1
        membarrier_global()
        self._pending = old

    def take(self) -> dict[bytes, tuple[Any, ...]]:
        """The retired half's flows, each CPU's slots summed: key bytes → FLOW_VALUE tuple."""
        if self._pending is None:
            raise RuntimeError("FlowCache.take() without advance()")  # a bug in the caller
        generation, self._pending = self._pending, None
        first = (generation & 1) * self.slots
        raw = self._read(first)
        parts: dict[bytes, list[tuple[int, tuple[Any, ...]]]] = {}
        unpack = abi.FLOW_VALUE.unpack_from
        for slot, tag, first_ns in SLOT.iter_unpack(raw):
            if tag == generation:
                parts.setdefault(slot[:KEY_SIZE], []).append((first_ns, unpack(slot, KEY_SIZE)))
        return {key: merge_cpus(found) for key, found in parts.items()}

    def _read(self, first: int) -> bytes:
        """Every CPU's values of slots first … first + slots - 1, one batch lookup."""
        count = ct.c_uint32(self.slots)
        token = ct.c_uint32(0)
        previous = ct.c_uint32(first - 1)  # the batch starts after the key passed in
        res = self._lib.bpf_lookup_batch(
            self._fd, ct.byref(previous) if first else None, ct.byref(token),
            self._keys, self._values, ct.byref(count),
        )  # fmt: skip
        err = ct.get_errno()
        if res != 0 and err != errno.ENOENT:  # ENOENT: the read reached the map's end
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        if count.value != self.slots:
            raise OSError(errno.EIO, f"flow cache read {count.value} of {self.slots} slots")
        return ct.string_at(self._values, SLOT.size * self._cpus * self.slots)

    def close(self) -> None:
        """Unmap the generation (before the program's maps are closed)."""
        del self._generation
        self._page.close()
