"""Records → OTLP ``ExportLogsServiceRequest`` bytes (protobuf wire format).

One encoder serves the gRPC and the HTTP transport. Each record becomes a LogRecord:
``event_name`` ``flowscope.flow`` / ``flowscope.dns`` (field 12 of opentelemetry-proto
≥ 1.5; the same name is also sent as the ``event.name`` attribute for receivers built
before that field existed), ``time_unix_nano`` = flow end (DNS: ``time_ns``),
``observed_time_unix_nano`` = export time, and one attribute per record key with a typed
value (str → string_value, int → int_value, bool → bool_value, float → double_value,
list → array_value, object → kvlist_value).

The bytes are written by hand rather than through the generated message classes: the
records are flat and their keys and most string values repeat, so encoding each
``KeyValue`` once and reusing it is about five times faster than building message
objects (docs/performance.md). The output is checked against the official
opentelemetry-proto parser in tests/unit/exporter/test_otlp_encoding.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from flowscope import __version__
from flowscope.exporter.sink import Kind, Record

EVENT_NAMES = {Kind.FLOW: "flowscope.flow", Kind.DNS: "flowscope.dns"}
TIME_KEYS = {Kind.FLOW: "flow.end_ns", Kind.DNS: "time_ns"}
SCOPE_NAME = "flowscope.exporter"

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 as its 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: tag byte, length, payload (tags here are < 16)."""
    return bytes((tag,)) + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """An ``AnyValue`` message for a JSON value (None → empty AnyValue)."""
    if type(value) is str:
        return _field(0x0A, value.encode())
    if type(value) is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if type(value) is int:
        return b"\x18" + varint(value)
    if type(value) is float:
        return b"\x21" + _pack_double(value)
    if isinstance(value, (list, tuple)):
        return _field(0x2A, b"".join([_field(0x0A, any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join([_field(0x0A, key_value(k, v)) for k, v in value.items()]))
    return b""


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue`` message."""
    return _field(0x0A, key.encode()) + _field(0x12, any_value(value))


class LogsEncoder:
    """Encodes batches of records into ExportLogsServiceRequest bytes.

    Keeps a bounded cache of encoded attributes (a ``KeyValue`` field per key and
    string/bool value, a key prefix per key for integers): the same namespace, pod and
    node names recur in every batch.
    """

    CACHE_LIMIT = 200_000

    def __init__(self, resource_attributes: Mapping[str, Any]) -> None:
        attributes = b"".join(_field(0x0A, key_value(k, v)) for k, v in resource_attributes.items())
        self._resource = _field(0x0A, attributes)  # ResourceLogs.resource{attributes = 1}
        # ScopeLogs.scope (field 1) = InstrumentationScope{name = 1, version = 2}
        self._scope = _field(
            0x0A, _field(0x0A, SCOPE_NAME.encode()) + _field(0x12, __version__.encode())
        )
        self._cache: dict[tuple[str, Any], bytes] = {}
        self._int_prefix: dict[str, bytes] = {}
        self._event = {
            k: _field(0x62, n.encode()) + _attribute("event.name", n)
            for k, n in EVENT_NAMES.items()
        }

    def encode(self, kind: Kind, records: Iterable[Record], observed_ns: int) -> bytes:
        """One request holding every record as a LogRecord of one resource and scope."""
        observed = b"\x59" + _pack_fixed64(observed_ns)
        event = self._event[kind]
        time_key = TIME_KEYS[kind]
        logs = [self._scope]
        for record in records:
            body = self._attributes(record)
            when = record.get(time_key)
            stamp = b"\x09" + _pack_fixed64(when) if type(when) is int and when >= 0 else b""
            size = len(stamp) + len(observed) + len(body) + len(event)
            logs.append(b"".join((b"\x12", varint(size), stamp, observed, body, event)))
        scope_logs = b"".join(logs)
        resource_logs = self._resource + b"\x12" + varint(len(scope_logs)) + scope_logs
        return b"\x0a" + varint(len(resource_logs)) + resource_logs

    def _attributes(self, record: Record) -> bytes:
        cached = self._cache.get
        parts: list[bytes] = []
        append = parts.append
        for key, value in record.items():
            t = type(value)
            if t is str or t is bool or (t is int and 0 <= value < 65536):
                encoded = cached((key, value))
                if encoded is None:
                    encoded = self._remember((key, value), _attribute(key, value))
                append(encoded)
            elif t is int:
                append(self._int_attribute(key, value))
            elif t is list and all(type(v) is str for v in value):  # TCP flag tags recur
                frozen = (key, tuple(value))
                encoded = cached(frozen)
                if encoded is None:
                    encoded = self._remember(frozen, _attribute(key, value))
                append(encoded)
            elif value is not None:
                append(_attribute(key, value))
        return b"".join(parts)

    def _int_attribute(self, key: str, value: int) -> bytes:
        """A large integer attribute: the key's encoded prefix, then a fresh varint."""
        prefix = self._int_prefix.get(key)
        if prefix is None:
            prefix = self._int_prefix[key] = _field(0x0A, key.encode())
        v = varint(value)
        size = len(prefix) + 3 + len(v)
        if size < 0x80:  # every flowscope key is short: one length byte (the fast case)
            return b"\x32%c%b\x12%c\x18%b" % (size, prefix, len(v) + 1, v)
        return _attribute(key, value)

    def _remember(self, cache_key: tuple[str, Any], encoded: bytes) -> bytes:
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()  # crude but bounded; refills with what recurs
        self._cache[cache_key] = encoded
        return encoded


def _attribute(key: str, value: Any) -> bytes:
    """A LogRecord ``attributes`` field (field 6)."""
    return _field(0x32, key_value(key, value))


def resource_attributes(cluster_name: str) -> dict[str, str]:
    """``service.name=flowscope`` and ``k8s.cluster.name`` when configured."""
    out = {"service.name": "flowscope", "service.version": __version__}
    if cluster_name:
        out["k8s.cluster.name"] = cluster_name
    return out
