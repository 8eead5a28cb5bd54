"""Logging: JSON lines on stderr (or text), and rate-limited reports of bad input."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:  # a value orjson refuses: the line all the same
            return orjson.dumps({key: _plain(value) for key, value in out.items()}).decode()


def _plain(value: Any) -> Any:
    """A log field orjson can write: a str with a lone surrogate (bytes decoded with
    surrogateescape) escaped, an int beyond 64 bits or a value holding either as its
    text. Refused, the whole line was lost, and logging's "--- Logging error ---"
    traceback broke the JSON stream."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    try:
        orjson.dumps(value, default=str)
        return value
    except orjson.JSONEncodeError:
        return _plain(str(value))


JsonFormatter.converter = time.gmtime  # type: ignore[assignment]


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: msg key=value ...``: the ``extra=`` fields JSON lines carry
    (which URL, what error, when the retry comes) are part of the line here too."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={_text_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _RESERVED and not key.startswith("_")
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the line
        return f"{head} {' '.join(fields)}{newline}{rest}"


def _text_value(value: Any) -> str:
    text = str(value)
    return repr(text) if not text or any(c.isspace() or c in "='\"" for c in text) else text


def configure(fmt: str = "json", level: str = "info") -> None:
    """Send all logs to stderr in ``fmt`` (``json`` or ``text``) at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries are chatty at INFO about reconnects we report ourselves.
    logging.getLogger("nats").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, BadRequests)]
    server.addFilter(BadRequests())


class Throttle:
    """Lets one event per key through per ``interval`` seconds, and says how many of that
    key it held back since: what :class:`RateLimitedLog` and :class:`BadRequests` log."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """How many events of ``key`` were held back since the last one let through, or
        None: this one is held back too."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        if len(self._last) > 10_000:  # bounded: forget the oldest keys
            for old in list(self._last)[:5_000]:
                del self._last[old]
        return self._suppressed.pop(key, 0)


class BadRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a header over 8 KB, a bad request line) at
    ERROR with a traceback, once per request, though it only answers 400: any client that
    reaches /metrics could fill the log. Such a record becomes one warning line without
    the traceback, at most one per ``interval`` (with how many were suppressed, as
    :class:`RateLimitedLog` does); any other record of that logger, a handler's own crash
    among them, passes as it is."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = Throttle(interval, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        suppressed = self._throttle.admit("bad-request")
        if suppressed is None:
            return False
        record.msg = f"{record.getMessage()}: answered {error.code} ({type(error).__name__})"
        record.args = ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.suppressed = suppressed
        return True


class RateLimitedLog:
    """Logs one line per key per ``interval`` seconds, with how many were suppressed.

    Used for bad input: every bad item is counted in metrics, but a flood of them must
    not flood the log.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._throttle = Throttle(interval)

    def warning(self, key: str, msg: str, **context: Any) -> None:
        suppressed = self._throttle.admit(key)
        if suppressed is not None:
            self._logger.warning(msg, extra={**context, "kind": key, "suppressed": suppressed})
