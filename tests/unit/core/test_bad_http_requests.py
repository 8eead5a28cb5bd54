"""Requests the HTTP endpoint cannot parse do not fill the log.

aiohttp answers a header over 8 KB or a bad request line with 400 and logs it at ERROR
with a traceback, once per request; anyone who reaches /metrics could send them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadStatusLine
from flowscope.core import logs, serving
from prometheus_client import CollectorRegistry

HUGE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n"
GARBAGE = b"\xff\xfe garbage\r\n\r\n"


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return answer.split(b"\r\n")[0]


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    logs.configure("json", "info")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(handler)
    yield seen
    root.removeHandler(handler)


async def test_unparseable_requests_are_one_warning_without_a_traceback(
    records: list[logging.LogRecord],
) -> None:
    runner, port = await serving.start("127.0.0.1:0", CollectorRegistry(), serving.Health())
    try:
        answers = [await ask(port, request) for request in (HUGE, GARBAGE, HUGE, HUGE)]
    finally:
        await runner.cleanup()
    assert all(answer.endswith(b"400 Bad Request") for answer in answers), answers
    server = [r for r in records if r.name == "aiohttp.server"]
    assert len(server) == 1, [r.getMessage() for r in server]
    (record,) = server
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "answered 400 (LineTooLong)" in record.getMessage()
    assert "Traceback" not in logs.JsonFormatter().format(record)


def bad_request_record() -> logging.LogRecord:
    """What aiohttp.server logs for a request line it cannot parse."""
    try:
        raise BadStatusLine("x")
    except BadStatusLine as e:
        error = (type(e), e, e.__traceback__)
    message = "Error handling request from %s"
    return logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, message, ("peer",), error)


def test_the_first_after_the_interval_says_how_many_were_suppressed() -> None:
    now = [0.0]
    limit = logs.BadRequests(interval=10.0, clock=lambda: now[0])
    first, second, third, later = (bad_request_record() for _ in range(4))
    assert limit.filter(first) and not limit.filter(second) and not limit.filter(third)
    now[0] = 10.0
    assert limit.filter(later)
    assert (first.suppressed, later.suppressed) == (0, 2)  # type: ignore[attr-defined]
    assert later.getMessage() == "Error handling request from peer: answered 400 (BadStatusLine)"


def test_a_handlers_own_crash_passes_as_it_is() -> None:
    limit = logs.BadRequests()
    error = RuntimeError("bug")
    crash = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        "",
        0,
        "Error handling request",
        (),
        (RuntimeError, error, None),
    )
    assert limit.filter(crash) and limit.filter(crash)
    assert crash.levelno == logging.ERROR and crash.exc_info is not None
