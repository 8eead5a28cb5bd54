"""The stdout sink: NDJSON, one enriched record per line, exactly the contract keys.

A message whose records all passed validation is written as it came
(:meth:`StdoutSink.export_lines`): its body already is those records' NDJSON, one per
line, and encoding each decoded record again took a tenth of the exporter's CPU. Of a
message that lost records to the dead-letter subject the consumer hands over the rest
encoded again, so only valid records are written.

Each batch is written with ``os.write`` on file descriptor 1 in a worker thread, so a
slow reader (``jq`` behind a pipe) blocks only this sink, never the event loop. When the
reader goes away (``head -n 3``) the write fails with EPIPE; the sink then points fd 1
at /dev/null (so the interpreter's own exit flush cannot fail either) and raises
:class:`SinkClosedError`, which ends the exporter cleanly with status 0. Any other
write error (a full disk behind a redirect) is raised, and the batch comes back; the
line it cut short is finished first, so a retry never leaves half a record on a line.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
from collections.abc import Sequence

from flowscope.core import codec
from flowscope.exporter.sink import ExportResult, Kind, Record, SinkClosedError


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write less than asked on a pipe).

    fd 1 may be non-blocking (O_NONBLOCK belongs to the open file description, so a
    parent sharing it may have set it): a full pipe then answers EAGAIN after part of
    a line was written. Waiting until it takes more, as a blocking write does, keeps
    every line whole; raised, the batch was written again from its start after the
    half line, which broke that line and doubled the ones before it."""
    view = memoryview(data)
    writable = select.poll()
    writable.register(fd, select.POLLOUT)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            writable.poll()  # POLLERR (the reader left) wakes it too: the write says EPIPE
            continue
        except OSError as e:
            raise WriteError(len(data) - len(view), e) from e
        view = view[written:]


class WriteError(Exception):
    """``os.write`` failed after ``written`` bytes of the data (the cause: its error)."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(f"writing stdout failed after {written} bytes: {cause}")
        self.written = written
        self.errno = cause.errno


def rest_of_line(data: bytes, written: int) -> bytes:
    """What ``data`` still owes the line that its first ``written`` bytes leave open."""
    if written == 0 or data[written - 1] == ord("\n"):
        return b""
    return data[written : data.index(b"\n", written) + 1]


class StdoutSink:
    """Writes records to a file descriptor (stdout unless a test passes another)."""

    name = "stdout"

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = asyncio.Lock()  # batches must not interleave their lines
        self._closed = False
        # The end of a line a failed write cut short: written before anything else, so
        # the batch, written again whole, starts on a line of its own.
        self._rest = b""

    async def start(self) -> None:
        return None

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        return await self._write(b"".join(codec.encode_lines(records)))

    async def export_lines(self, kind: Kind, bodies: Sequence[bytes], count: int) -> ExportResult:
        """Write message bodies (NDJSON of ``count`` validated records) as they came."""
        return await self._write(b"".join(bodies))

    async def _write(self, data: bytes) -> ExportResult:
        async with self._lock:
            if self._closed:
                raise SinkClosedError("stdout is closed")
            data = self._rest + data if self._rest else data
            try:
                await asyncio.to_thread(write_all, self._fd, data)
            except WriteError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    self._rest = rest_of_line(data, e.written)
                    raise
                self._close_quietly()
                raise SinkClosedError("stdout reader went away") from e
            self._rest = b""
        return ExportResult()

    def _close_quietly(self) -> None:
        self._closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._fd)
        os.close(devnull)

    async def force_flush(self) -> None:
        return None  # nothing is buffered: each batch is written through

    async def shutdown(self) -> None:
        return None

    async def close(self) -> None:
        return None
