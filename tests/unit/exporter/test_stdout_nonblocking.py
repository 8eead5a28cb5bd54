"""The stdout sink keeps lines whole when fd 1 cannot take a batch at once: a
non-blocking pipe (O_NONBLOCK set by a parent sharing fd 1), a write that fails midway."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import threading
from pathlib import Path

import orjson
import pytest
from flowscope.exporter.sink import Kind
from flowscope.exporter.stdout import StdoutSink

from tests.unit.exporter.sample import flow


def fill(fd: int) -> bytes:
    """Write newlines into a non-blocking pipe until it is full; returns what was written."""
    written = bytearray()
    while True:
        try:
            written += b"\n" * os.write(fd, b"\n" * 4096)
        except BlockingIOError:
            return bytes(written)


async def test_a_full_non_blocking_pipe_gets_every_line_once_and_whole() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    padding = fill(write_end)  # the sink's first write finds no room: EAGAIN
    records = [flow(i) for i in range(500)]  # far more than a pipe holds
    sink = StdoutSink(write_end)
    export = asyncio.create_task(sink.export(Kind.FLOW, records))
    await asyncio.sleep(0)  # the export is under way, waiting for room
    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(read_all(read_end)))
    reader.start()
    try:
        await export
    finally:
        os.close(write_end)
        await asyncio.to_thread(reader.join)
        os.close(read_end)
    assert bytes(received[: len(padding)]) == padding
    lines = bytes(received[len(padding) :]).splitlines()
    assert [orjson.loads(line) for line in lines] == records


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_a_write_that_fails_midway_leaves_no_half_line(tmp_path: Path) -> None:
    """A file that stops growing mid-line (a full disk; here RLIMIT_FSIZE, the same short
    write, then an error), then grows again: the redelivered batch must not continue the
    half-written line."""
    path = tmp_path / "stdout.ndjson"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    sink = StdoutSink(fd)
    records = [flow(i) for i in range(50)]
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (5_001, limits[1]))  # not on a line end
        with pytest.raises(Exception, match="File too large"):
            await sink.export(Kind.FLOW, records)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, xfsz)
    await sink.export(Kind.FLOW, records)  # what the lane's redelivery does
    os.close(fd)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    cut = len(lines) - len(records)
    assert 0 < cut < len(records)
    assert lines == records[:cut] + records
