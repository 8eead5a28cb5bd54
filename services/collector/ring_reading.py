"""Read a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) straight from its mmap()ed pages.

bcc's ``ring_buffer_poll()`` calls back into Python once per record through ctypes
(~0.4 µs before the callback does anything) and the callback must copy the bytes
before it returns. A ring buffer's pages can be mapped by user space instead (what
libbpf's ``ring_buffer__consume`` does in C): one page holding the consumer position
(read-write), then the producer position page and the data area, mapped twice in a row
so that a record that wraps around the end is contiguous (read-only). Every record
starts with an 8-byte header: ``u32 len`` whose bit 31 says the producer has reserved
but not yet committed the record (BUSY) and bit 30 that it was discarded, and ``u32
pg_off`` (for the kernel); records start at 8-byte boundaries.

The reader takes every committed record between the consumer and the producer position
in one pass and unpacks fixed-size records of one ``struct`` format with
``Struct.iter_unpack`` — a few tens of ns per record — then publishes the new consumer
position, which frees the space for the kernel.

Memory ordering: the kernel commits a record by clearing BUSY with a store-release after
writing the data; reading the header and then the data in program order is enough on
x86 (loads are not reordered with older loads), not on weaker architectures, where
Python code has no acquire load. :func:`supported` says whether this machine is one the
reader is correct on; elsewhere the caller keeps bcc's callback.
"""

from __future__ import annotations

import mmap
import platform
import struct
from typing import Any

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = struct.Struct("<II")  # len (with BUSY / DISCARD), pg_off
_TOTAL_ORDER_MACHINES = ("x86_64", "AMD64", "i686", "i386")


def supported(machine: str | None = None) -> bool:
    """True where plain loads give the ordering the ring buffer protocol needs (x86)."""
    return (machine or platform.machine()) in _TOTAL_ORDER_MACHINES


def record_stride(sample_size: int) -> int:
    """Bytes one record of ``sample_size`` takes in the ring: header, sample, padding to 8."""
    return (HEADER.size + sample_size + 7) & ~7


class RingReader:
    """Consumer of one BPF ring buffer whose records are all one ``struct`` format.

    ``map_fd``: the ring buffer map's fd (bcc: ``table.map_fd``); ``size``: its data
    size in bytes (``max_entries``, a power of two); ``sample``: the format of every
    record's sample. :meth:`read` returns the unpacked samples; records of another
    length (none are written by flowscope's programs) are skipped and counted in
    :attr:`skipped`.
    """

    def __init__(self, map_fd: int, size: int, sample: struct.Struct) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.fd = map_fd
        self.skipped = 0
        self._size = size
        self._mask = size - 1
        self._sample = sample
        self._stride = record_stride(sample.size)
        padding = self._stride - HEADER.size - sample.size
        # The sample between the header and the padding, as one format skipping both:
        # one iter_unpack per contiguous run of committed records yields the samples
        # themselves (no per-record header check, slice or append in Python).
        self._record = struct.Struct(f"<8x{sample.format.lstrip('<@=!>')}{padding}x")
        self._words = self._stride // 4  # u32 words per record: the header's stride
        self._consumer_map = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._data_map = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._consumer = memoryview(self._consumer_map)[:8].cast("Q")
        self._producer = memoryview(self._data_map)[:8].cast("Q")
        self._data = memoryview(self._data_map)[page:]

    def available(self) -> int:
        """Bytes between the consumer and the producer position (committed or not)."""
        return int(self._producer[0] - self._consumer[0])

    def read(self) -> list[tuple[Any, ...]]:
        """Every committed record available now, unpacked; frees their space.

        Stops at the first record still being written (BUSY): the records after it
        wait for the next read, as in libbpf.
        """
        out: list[tuple[Any, ...]] = []
        consumer = self._consumer[0]
        producer = self._producer[0]
        stride, length = self._stride, self._sample.size
        while consumer < producer:
            start = consumer & self._mask
            # The data is mapped twice: [start, start + size) is contiguous.
            run = min(producer - consumer, self._size) // stride * stride
            taken = 0
            if run:
                block = self._data[start : start + run]
                # Every record's first u32 (its len with BUSY / DISCARD), strided: the
                # leading records that are whole committed samples are unpacked at once.
                heads = block.cast("I")[:: self._words].tolist()
                whole = len(heads) if heads.count(length) == len(heads) else _leading(heads, length)
                if whole:
                    taken = whole * stride
                    out.extend(self._record.iter_unpack(block[:taken]))
            consumer += taken
            if run and taken == run:
                continue
            # A record that is not one whole committed sample: BUSY, discarded, or
            # another length.
            header = HEADER.unpack_from(self._data, consumer & self._mask)[0]
            if header & BUSY:
                break
            if header == length and taken < run:
                continue  # committed since the pass above looked at it
            if not header & DISCARD:
                self.skipped += 1
            consumer += (HEADER.size + (header & ~(BUSY | DISCARD)) + 7) & ~7
        self._consumer[0] = consumer
        return out

    def close(self) -> None:
        """Unmap the pages (idempotent); the map itself belongs to its owner."""
        if self._data_map.closed:
            return
        self._consumer.release()
        self._producer.release()
        self._data.release()
        self._consumer_map.close()
        self._data_map.close()


def _leading(heads: list[int], length: int) -> int:
    """How many of ``heads`` from the start equal ``length``."""
    for n, head in enumerate(heads):
        if head != length:
            return n
    return len(heads)
