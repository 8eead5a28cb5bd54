"""The one codec for every flowscope message: a batch of records as UTF-8 NDJSON.

A message body holds one JSON object per line (each line ends with ``\\n``). Two headers
describe it: ``Flowscope-Schema: <name>/<version>`` and ``Flowscope-Count: <records>``.
:func:`decode` checks both and raises :class:`~flowscope.core.errors.CodecError` (or a
subclass) for anything else — garbage, truncation, a wrong schema or version — never
another exception type.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from flowscope.core.errors import CodecError, SchemaMismatchError

SCHEMA_HEADER = "Flowscope-Schema"
COUNT_HEADER = "Flowscope-Count"
MAX_COUNT_DIGITS = 18  # a Flowscope-Count header: a record count fits a signed 64-bit integer


@dataclass(frozen=True, slots=True)
class Schema:
    """A record schema and the version this build writes and reads."""

    name: str
    version: int

    @property
    def header(self) -> str:
        return f"{self.name}/{self.version}"


RAW_FLOW = Schema("raw.flow", 1)
RAW_SOCKET = Schema("raw.socket", 1)
RAW_DNS = Schema("raw.dns", 1)
FLOW = Schema("flow", 1)
DNS = Schema("dns", 1)
SCHEMAS = {s.header: s for s in (RAW_FLOW, RAW_SOCKET, RAW_DNS, FLOW, DNS)}


def kept_json(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a bytes object of its own length, for keeping.

    orjson writes into a buffer of at least 4 KiB and returns that buffer as the bytes
    object without shrinking it (orjson 3.13: ``sys.getsizeof`` says 52 bytes for a
    19-byte result, tracemalloc 4,097). A short-lived result costs nothing by it; one
    kept in a cache holds 4 KiB whatever its length — 50,000 DNS names' JSON forms held
    195 MB, each on a page of its own. The copy holds its length.
    """
    return bytes(memoryview(orjson.dumps(value)))


@dataclass(frozen=True, slots=True)
class Batch:
    """One encoded message: body and headers, ready for ``publish``."""

    body: bytes
    headers: dict[str, str]
    count: int


def encode(schema: Schema, records: Iterable[Mapping[str, Any]]) -> Batch:
    """Encode records (wire dicts) as one NDJSON batch."""
    lines = encode_lines(records)
    return Batch(b"".join(lines), _headers(schema, len(lines)), len(lines))


def encode_lines(records: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """Each record as its NDJSON line (newline included), as :func:`encode_chunks` writes
    it; :func:`chunk_lines` batches them. A record nested deeper than orjson writes (254
    levels: the decoder reads 1 024, and the contract leaves unknown keys free) is
    written by :func:`deep_json`, the same text: orjson's "Recursion limit reached"
    stopped the exporter re-encoding such a record (for stdout, for a dead-letter copy)."""
    records = records if isinstance(records, list) else list(records)
    try:
        return [orjson.dumps(r) + b"\n" for r in records]
    except orjson.JSONEncodeError:  # too deep (or not JSON at all: raised again below)
        return [deep_json(r) + b"\n" for r in records]


def deep_json(value: object) -> bytes:
    """``orjson.dumps(value)`` without orjson's depth limit: the same compact text,
    lists and objects written here with a stack of their own instead of recursion,
    everything else by orjson. ``todo`` holds values still to write and punctuation
    (bytes: a decoded record holds none)."""
    out: list[bytes] = []
    todo: list[object] = [value]
    while todo:
        item = todo.pop()
        if type(item) is bytes:
            out.append(item)
        elif type(item) is list:
            parts: list[object] = [b"["]
            for i, element in enumerate(item):
                parts += [b"," if i else b"", element]
            todo += reversed([*parts, b"]"])
        elif type(item) is dict:
            parts = [b"{"]
            for i, (key, element) in enumerate(item.items()):
                parts += [(b"," if i else b"") + orjson.dumps(key) + b":", element]
            todo += reversed([*parts, b"}"])
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


def encode_chunks(
    schema: Schema, records: Iterable[Mapping[str, Any]], max_bytes: int
) -> Iterator[Batch]:
    """Encode records into as many batches as needed to keep each body ≤ ``max_bytes``.

    A single record larger than ``max_bytes`` raises :class:`CodecError` (it can never be
    published); callers count it as a drop.
    """
    return chunk_lines(schema, (orjson.dumps(r) + b"\n" for r in records), max_bytes)


def chunk_lines(schema: Schema, lines: Iterable[bytes], max_bytes: int) -> Iterator[Batch]:
    """Batch already encoded records (each one JSON object ending in ``\\n``) like
    :func:`encode_chunks`: bodies ≤ ``max_bytes``, :class:`CodecError` for a larger line.

    A list of lines that fits in one body (the usual case: a subject's share of one raw
    batch) is joined at once instead of line by line."""
    if type(lines) is list and lines:
        size = sum(map(len, lines))  # no line can exceed max_bytes when all fit
        if size <= max_bytes:
            yield Batch(b"".join(lines), _headers(schema, len(lines)), len(lines))
            return
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if len(line) > max_bytes:
            raise CodecError("record-too-large", f"{len(line)} bytes > {max_bytes}")
        if size + len(line) > max_bytes and batch:
            yield Batch(b"".join(batch), _headers(schema, len(batch)), len(batch))
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        yield Batch(b"".join(batch), _headers(schema, len(batch)), len(batch))


def _headers(schema: Schema, count: int) -> dict[str, str]:
    return {SCHEMA_HEADER: schema.header, COUNT_HEADER: str(count)}


def schema_of(headers: Mapping[str, str] | None) -> Schema:
    """The known schema a message's headers name; :class:`SchemaMismatchError` if none."""
    got = (headers or {}).get(SCHEMA_HEADER)
    schema = SCHEMAS.get(got or "")
    if schema is None:
        raise SchemaMismatchError("a flowscope schema", got)
    return schema


def decode(
    expected: Schema, headers: Mapping[str, str] | None, body: bytes
) -> list[dict[str, Any]]:
    """Decode one batch into its records (dicts), checking schema, version and count."""
    got = (headers or {}).get(SCHEMA_HEADER)
    if got != expected.header:
        raise SchemaMismatchError(expected.header, got)
    records = decode_body(body)
    count = (headers or {}).get(COUNT_HEADER)
    if count is not None and count != str(len(records)):
        raise CodecError("count-mismatch", f"header says {count}, body has {len(records)}")
    return records


def framed(expected: Schema, headers: Mapping[str, str] | None, body: bytes) -> int | None:
    """How many lines a message's body must hold for :func:`decode` to accept its
    framing — its schema, a body of lines each ending in a newline, as many as its
    count header says (-1: there is none, any number) — or None when the schema, the
    final newline or the header itself already fails (so that the enricher's compiled
    core, which reads the lines and counts them, is left only the lines to check)."""
    if (headers or {}).get(SCHEMA_HEADER) != expected.header or not body.endswith(b"\n"):
        return None
    if COUNT_HEADER not in (headers or {}):
        return -1
    return stated_count(headers)


def stated_count(headers: Mapping[str, str] | None) -> int | None:
    """The record count a message's ``Flowscope-Count`` header states: a plain decimal
    (0-9 only, no sign, space or leading zero) of at most :data:`MAX_COUNT_DIGITS`
    digits; None when there is no header or it states no such count. The bound is not
    only a count's: ``int`` refuses a text of over 4 300 digits with a ValueError, which
    is not a :class:`CodecError` and would escape the callers' handling of bad input."""
    count = (headers or {}).get(COUNT_HEADER)
    if count is None or len(count) > MAX_COUNT_DIGITS:
        return None
    return int(count) if count.isascii() and count.isdigit() and count == str(int(count)) else None


def decode_body(body: bytes) -> list[dict[str, Any]]:
    """Parse an NDJSON body; every line must be one JSON object.

    Each line is parsed on its own. Parsing the body as one JSON array, its line breaks
    made commas, read a value cut over two lines (a string, an object cut where a comma
    belongs) as one, and so took a body that is not NDJSON when another line held two
    values; nor was it faster (orjson 3.13, lines of 280 bytes to 2 KB).
    """
    if not body:
        return []
    if not body.endswith(b"\n"):
        raise CodecError("truncated", "body does not end with a newline")
    records: list[dict[str, Any]] = []
    loads = orjson.loads
    for number, line in enumerate(body[:-1].split(b"\n"), 1):
        try:
            record = loads(line)
        except orjson.JSONDecodeError as e:
            raise CodecError("malformed", f"line {number}{_fault(line, e)}") from e
        if type(record) is not dict:
            raise CodecError("malformed", f"line {number} is not a JSON object")
        records.append(record)
    return records


def _fault(line: bytes, error: orjson.JSONDecodeError) -> str:
    """What is wrong with a line that is not one JSON value: two or more, or ``error``."""
    try:
        several = len(orjson.loads(b"[" + line + b"]")) > 1
    except orjson.JSONDecodeError:
        several = False
    return " holds more than one JSON value" if several else f": {error}"
