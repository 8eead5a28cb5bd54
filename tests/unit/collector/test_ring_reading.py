"""RingReader against a file laid out as the kernel maps a BPF ring buffer.

The kernel maps the data area twice in a row; a memfd cannot alias pages, so the fake
producer writes every byte to both copies — what user space sees is the same. The
privileged socket-tracing tests read a real ring buffer (full ring included).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest
from flowscope.collector.ring_reading import (
    BUSY,
    DISCARD,
    HEADER,
    RingReader,
    record_stride,
    supported,
)

PAGE = mmap.PAGESIZE
SAMPLE = struct.Struct("<QI4s")  # 16 bytes: stride 24
SIZE = PAGE  # data area: one page


class FakeRing:
    """The producer side: positions and records written as the kernel writes them."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fake-ringbuf")
        os.ftruncate(self.fd, 2 * PAGE + 2 * SIZE)
        self.map = mmap.mmap(self.fd, 2 * PAGE + 2 * SIZE)
        self.producer = 0

    def write(self, pos: int, data: bytes) -> None:
        for copy in (0, SIZE):
            for i, byte in enumerate(data):
                self.map[2 * PAGE + copy + (pos + i) % SIZE] = byte

    def reserve(self, length: int) -> int:
        pos = self.producer
        self.write(pos, HEADER.pack(length | BUSY, 0))
        self.producer += (HEADER.size + length + 7) & ~7
        struct.pack_into("<Q", self.map, PAGE, self.producer)
        return pos

    def commit(self, pos: int, payload: bytes, discard: bool = False) -> None:
        self.write(pos + HEADER.size, payload)
        self.write(pos, HEADER.pack(len(payload) | (DISCARD if discard else 0), 0))

    def submit(self, payload: bytes) -> None:
        self.commit(self.reserve(len(payload)), payload)

    @property
    def consumer(self) -> int:
        return int(struct.unpack_from("<Q", self.map, 0)[0])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    fake = FakeRing()
    yield fake
    fake.close()


@pytest.fixture
def reader(ring: FakeRing) -> Iterator[RingReader]:
    r = RingReader(ring.fd, SIZE, SAMPLE)
    yield r
    r.close()


def sample(n: int) -> bytes:
    return SAMPLE.pack(n, n * 3, f"{n:04d}"[-4:].encode())


def test_reads_every_committed_record_in_order_and_frees_the_space(
    ring: FakeRing, reader: RingReader
) -> None:
    for n in range(10):
        ring.submit(sample(n))
    assert reader.read() == [SAMPLE.unpack(sample(n)) for n in range(10)]
    assert ring.consumer == ring.producer == 10 * record_stride(SAMPLE.size)
    assert reader.read() == []


def test_records_that_wrap_around_the_end_of_the_data_area(
    ring: FakeRing, reader: RingReader
) -> None:
    stride = record_stride(SAMPLE.size)
    total = 0
    for round_ in range(5):  # SIZE / stride is not whole: records straddle the end
        batch = [sample(total + i) for i in range(SIZE // stride - 3)]
        for payload in batch:
            ring.submit(payload)
        assert reader.read() == [SAMPLE.unpack(p) for p in batch], round_
        total += len(batch)
    assert ring.consumer == total * stride > 2 * SIZE


def test_stops_at_a_record_still_being_written_and_reads_it_once_committed(
    ring: FakeRing, reader: RingReader
) -> None:
    ring.submit(sample(1))
    pending = ring.reserve(SAMPLE.size)
    ring.submit(sample(3))  # committed, but behind the busy one
    assert reader.read() == [SAMPLE.unpack(sample(1))]
    assert ring.consumer == pending
    ring.commit(pending, sample(2))
    assert reader.read() == [SAMPLE.unpack(sample(2)), SAMPLE.unpack(sample(3))]


def test_discarded_records_are_passed_over_and_other_lengths_counted(
    ring: FakeRing, reader: RingReader
) -> None:
    ring.submit(sample(1))
    ring.commit(ring.reserve(SAMPLE.size), sample(2), discard=True)
    ring.submit(b"\x01" * 5)  # not this ring's record type
    ring.submit(sample(4))
    assert reader.read() == [SAMPLE.unpack(sample(1)), SAMPLE.unpack(sample(4))]
    assert reader.skipped == 1
    assert ring.consumer == ring.producer


def test_size_must_be_a_power_of_two(ring: FakeRing) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingReader(ring.fd, 3 * PAGE, SAMPLE)


def test_only_machines_with_ordered_loads_use_it() -> None:
    assert supported("x86_64")
    assert not supported("aarch64")
