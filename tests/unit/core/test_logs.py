"""Log lines in text format carry the same fields as JSON lines."""

from __future__ import annotations

import logging
import sys

import orjson
from flowscope.core.logs import JsonFormatter, TextFormatter


def record(msg: str, **extra: object) -> logging.LogRecord:
    r = logging.makeLogRecord({"name": "flowscope.nats", "levelname": "WARNING", "msg": msg})
    r.__dict__.update(extra)
    return r


def test_text_lines_carry_the_extra_fields() -> None:
    """Before: "NATS unreachable; retrying" alone (which URL, what error: only in JSON)."""
    r = record(
        "NATS unreachable; retrying",
        url="nats://127.0.0.1:4222",
        error="[Errno 111] Connect call failed ('127.0.0.1', 4222)",
        retry_in=0.4,
        empty="",
    )
    line = TextFormatter().format(r)
    assert line.endswith(
        "WARNING flowscope.nats: NATS unreachable; retrying url=nats://127.0.0.1:4222 "
        "error=\"[Errno 111] Connect call failed ('127.0.0.1', 4222)\" retry_in=0.4 empty=''"
    )
    assert orjson.loads(JsonFormatter().format(r))["url"] == "nats://127.0.0.1:4222"


def test_a_traceback_stays_below_the_line_with_its_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        r = record("failed", step="drain")
        r.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(r).splitlines()
    assert first.endswith("failed step=drain")
    assert rest[-1] == "ValueError: boom"


def test_a_field_orjson_refuses_still_gives_one_json_line() -> None:
    """A name decoded with surrogateescape, an int beyond 64 bits, a dict with int keys:
    the line is written with those values as text, not lost."""
    record = logging.LogRecord("t", logging.WARNING, "", 0, "bad name %s", ("a\udcffb",), None)
    record.name_seen = "x\udcfe"
    record.count = 1 << 70
    record.by_port = {53: "dns"}
    line = JsonFormatter().format(record)
    parsed = orjson.loads(line)
    assert parsed["msg"] == "bad name a\\udcffb" and parsed["name_seen"] == "x\\udcfe"
    assert parsed["count"] == str(1 << 70) and parsed["by_port"] == "{53: 'dns'}"
    assert parsed["level"] == "warning" and "\n" not in line


def test_the_throttle_counts_each_key_apart() -> None:
    from flowscope.core.logs import Throttle

    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert [throttle.admit(k) for k in ("a", "a", "b", "a")] == [0, None, 0, None]
    now[0] = 10.0
    assert (throttle.admit("a"), throttle.admit("b")) == (2, 0)
