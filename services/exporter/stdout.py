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
:class:`SinkClosedError`, which ends the exporter cleanly with status 0.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence

from flowscope.core import codec
from flowscope.exporter.sink import ExportResult, Kind, Record, SinkClosedError


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write less than asked on a pipe)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StdoutSink:
    """Writes records to a file descriptor (stdout unless a test passes another)."""

    name = "stdout"

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = asyncio.Lock()  # batches must not interleave their lines
        self._closed = False

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
            try:
                await asyncio.to_thread(write_all, self._fd, data)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                self._close_quietly()
                raise SinkClosedError("stdout reader went away") from e
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
