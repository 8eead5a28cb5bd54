"""Records → OTLP ``ExportLogsServiceRequest`` bytes (protobuf wire format).

One encoder serves the gRPC and the HTTP transport. Each record becomes a LogRecord:
``event_name`` ``flowscope.flow`` / ``flowscope.dns`` (field 12 of opentelemetry-proto
≥ 1.5; the same name is also sent as the ``event.name`` attribute for receivers built
before that field existed), ``time_unix_nano`` = flow end (DNS: ``time_ns``),
``observed_time_unix_nano`` = export time, and one attribute per record key with a typed
value (str → string_value, int → int_value, bool → bool_value, float → double_value,
list → array_value, object → kvlist_value).

An integer outside int64 (the record contract allows any JSON integer, counters are
u64) cannot be an ``int_value``: the record is left out of the request and reported,
so the OTLP sink dead-letters it naming the key (:class:`OutOfRangeError`). So is a
record with a value nested deeper than the encoder recurses (:class:`TooDeepError`).

The bytes are written by hand rather than through the generated message classes: the
records are flat and their keys and most string values repeat, so encoding each
``KeyValue`` once and reusing it is about five times faster than building message
objects (docs/performance.md). The output is checked against the official
opentelemetry-proto parser in tests/unit/exporter/test_otlp_encoding.py.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping
from operator import getitem
from typing import Any

from flowscope import __version__
from flowscope.exporter.sink import Kind, Record

EVENT_NAMES = {Kind.FLOW: "flowscope.flow", Kind.DNS: "flowscope.dns"}
TIME_KEYS = {Kind.FLOW: "flow.end_ns", Kind.DNS: "time_ns"}
SCOPE_NAME = "flowscope.exporter"

_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class UnencodableError(ValueError):
    """A record value OTLP (or this encoder) cannot carry: the record is left out of the
    request and dead-lettered, naming the attribute."""


class OutOfRangeError(UnencodableError):
    """An integer OTLP cannot carry: ``AnyValue.int_value`` is int64, so 2**63 and up
    would arrive as a negative number.

    Such a record is refused (dead-lettered), not sent in another form: a
    ``string_value`` or ``double_value`` (inexact above 2**53) would change the type of
    a key that is an integer in every other record, which typed backends refuse or
    store apart, and queries on the number would silently miss it. Elasticsearch
    (``long``) refuses the same record, so both sinks agree: it is in the DLQ, with the
    key, for someone to look at — no real counter gets there (2**63 bytes is 8 EiB).
    """


class TooDeepError(UnencodableError):
    """A value nested deeper than the encoder's recursion reaches. The contract leaves
    unknown keys free, and the decoder accepts lists or objects 1,024 deep: raised as
    a RecursionError, it made every export of the batch fail, the record's neighbours
    with it, for as long as the message came back."""


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 as its 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # message lengths: two bytes
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value >= 0x10000000:
        # Nanosecond timestamps, byte counters: the low 28 bits are four bytes with the
        # continuation bit set, their 7-bit groups spread in two steps (14|14, then
        # 7|7 per half) instead of a byte-by-byte loop; the rest changes rarely
        # (every 0.27 s for a timestamp), so its encoding is remembered.
        low = value & 0xFFFFFFF
        low = (low & 0x3FFF) | (low & 0xFFFC000) << 2
        low = (low & 0x7F007F) | (low & 0x3F803F80) << 1
        return (low | 0x80808080).to_bytes(4, "little") + _high_varint(value >> 28)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_high_varint = functools.lru_cache(maxsize=4096)(varint)


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
        if not INT64_MIN <= value <= INT64_MAX:
            raise OutOfRangeError(f"{value} is outside int64")
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


# Encodings longer than this are made afresh, not cached: the values that recur (names,
# kinds, label values; a DNS name has at most 253 characters) are far shorter.
MAX_CACHED = 1024


class AttributeCache(dict[Any, bytes]):
    """Encoded ``attributes`` fields of one record key, by value — values of one type
    only (str, bool or int), so that equal-but-different values (``1``/``True``) never
    share an entry. Lookups happen in C (``map(getitem, …)``); a miss lands here."""

    __slots__ = ("budget", "key")

    def __init__(self, key: str, budget: CacheBudget) -> None:
        super().__init__()
        self.key = key
        self.budget = budget

    def __missing__(self, value: Any) -> bytes:
        encoded = self.fresh(value)
        if len(encoded) <= MAX_CACHED:
            self.budget.spend(encoded)
            self[value] = encoded
        return encoded

    def fresh(self, value: Any) -> bytes:
        """The attribute encoded without the cache."""
        return _attribute(self.key, value)


class Heads:
    """Everything of a scalar attribute before the value's own bytes, by their length:
    ``0x32 size KeyValue{key, 0x12 size AnyValue{tag [length]}}``. With it a fresh
    attribute is one concatenation; None where a length needs more than one byte."""

    __slots__ = ("_key_field", "_length_delimited", "_value_tag", "by_size")

    def __init__(self, key: str, value_tag: int, length_delimited: bool) -> None:
        self._key_field = _field(0x0A, key.encode())
        self._value_tag = value_tag
        self._length_delimited = length_delimited
        self.by_size: dict[int, bytes | None] = {}

    def __call__(self, size: int) -> bytes | None:
        """The head for a value of ``size`` bytes (None: use the general encoder)."""
        if size in self.by_size:
            return self.by_size[size]
        value_head = bytes((self._value_tag,))
        if self._length_delimited:
            value_head += varint(size)
        any_value = len(value_head) + size
        key_value = len(self._key_field) + 2 + any_value
        head = None
        if any_value < 0x80 and key_value < 0x80:
            head = b"\x32%c%b\x12%c%b" % (key_value, self._key_field, any_value, value_head)
        self.by_size[size] = head
        return head


class StrAttributes(AttributeCache):
    """String values (namespaces, pod, node, service names, kinds, …)."""

    __slots__ = ("heads",)

    def __init__(self, key: str, budget: CacheBudget) -> None:
        super().__init__(key, budget)
        self.heads = Heads(key, 0x0A, True)

    def fresh(self, value: str) -> bytes:
        v = value.encode()
        head = self.heads(len(v))
        return _attribute(self.key, value) if head is None else head + v


class IntAttributes(AttributeCache):
    """Integer values: small ones (ports, pids, small counters) are cached; large ones
    (nanosecond timestamps, byte counters) rarely repeat and are encoded afresh."""

    __slots__ = ("heads",)

    def __init__(self, key: str, budget: CacheBudget) -> None:
        super().__init__(key, budget)
        heads = Heads(key, 0x18, False)
        self.heads = tuple(heads(size) for size in range(11))  # a varint has ≤ 10 bytes

    def __missing__(self, value: int) -> bytes:
        if 0 <= value < 65536:
            return super().__missing__(value)
        return self.fresh(value)

    def fresh(self, value: int) -> bytes:
        if not INT64_MIN <= value <= INT64_MAX:
            return _attribute(self.key, value)  # raises OutOfRangeError naming the key
        v = varint(value)
        head = self.heads[len(v)] if len(v) < 11 else None
        return _attribute(self.key, value) if head is None else head + v


class Uncached:
    """Values encoded afresh every time: floats, objects, ``None`` (omitted, as the
    encoder omits nulls)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __getitem__(self, value: Any) -> bytes:
        return b"" if value is None else _attribute(self.key, value)


class UncachedStr(Uncached):
    """Strings unique per flow (``flow.community_id``): caching them would only evict
    the values that do recur."""

    __slots__ = ("heads",)

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.heads = Heads(key, 0x0A, True)

    def __getitem__(self, value: str) -> bytes:
        v = value.encode()
        head = self.heads(len(v))
        return _attribute(self.key, value) if head is None else head + v


class ListAttributes(Uncached):
    """Lists: lists of strings (TCP flag tags) are cached by their tuple."""

    __slots__ = ("cache",)

    def __init__(self, key: str, budget: CacheBudget) -> None:
        super().__init__(key)
        self.cache = AttributeCache(key, budget)

    def __getitem__(self, value: list[Any]) -> bytes:
        try:
            "".join(value)  # TypeError unless every item is a str (checked in C)
        except TypeError:
            return _attribute(self.key, value)
        return self.cache[tuple(value)]


Encoders = tuple["AttributeCache | Uncached", ...]


class CacheBudget:
    """What the cached encodings of all keys hold, in bytes — each charged its
    encoding twice (the value it is cached by is about as long) and ``ENTRY_COST`` for
    the objects and the dict's slot: past the limit every cache is emptied (crude but
    bounded; what recurs is cached again). Bytes rather than entries: values come from
    records anyone allowed to publish flows writes, and a count bounded 1 000 values of
    128 KB at 260 MB."""

    ENTRY_COST = 150

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.caches: list[dict[Any, bytes]] = []

    def spend(self, encoded: bytes) -> None:
        cost = self.ENTRY_COST + 2 * len(encoded)
        self.used += cost
        if self.used > self.limit:
            for cache in self.caches:
                cache.clear()
            self.used = cost


# Keys whose string values are unique per flow: caching them would only evict the rest.
UNCACHED_STRINGS = frozenset({"flow.community_id"})


class LogsEncoder:
    """Encodes batches of records into ExportLogsServiceRequest bytes.

    Per record *shape* (keys in order, and the type of each value) it keeps one encoder
    per key — a cache of encoded attributes by value for strings, booleans and small
    ints (the same namespace, pod and node names recur in every batch), a pre-encoded
    key prefix for large ints — so a record's attributes are one ``map`` over its
    values in C, calling Python only on a miss. ``plain_attributes`` is the
    straightforward encoding the tests compare it with, byte for byte.
    """

    CACHE_BYTES = 48 << 20  # cached attribute encodings, all keys together (CacheBudget)
    SHAPE_LIMIT = 10_000  # shapes remembered; label keys are user data, so bounded

    def __init__(self, resource_attributes: Mapping[str, Any]) -> None:
        attributes = b"".join(_field(0x0A, key_value(k, v)) for k, v in resource_attributes.items())
        self._resource = _field(0x0A, attributes)  # ResourceLogs.resource{attributes = 1}
        # ScopeLogs.scope (field 1) = InstrumentationScope{name = 1, version = 2}
        self._scope = _field(
            0x0A, _field(0x0A, SCOPE_NAME.encode()) + _field(0x12, __version__.encode())
        )
        self._budget = CacheBudget(self.CACHE_BYTES)
        self._encoders: dict[tuple[str, type], AttributeCache | Uncached] = {}
        self._resets = 0  # times the encoder table was emptied (full)
        self._shapes: dict[tuple[str, ...], tuple[tuple[type, ...], Encoders]] = {}
        self._event = {
            k: _field(0x62, n.encode()) + _attribute("event.name", n)
            for k, n in EVENT_NAMES.items()
        }

    def encode(
        self,
        kind: Kind,
        records: Iterable[Record],
        observed_ns: int,
        rejected: dict[int, str] | None = None,
    ) -> bytes:
        """One request holding every record as a LogRecord of one resource and scope.

        A record OTLP cannot carry (:class:`UnencodableError`) is left out and its index
        and reason put in ``rejected``; without ``rejected`` the error is raised."""
        observed = b"\x59" + _pack_fixed64(observed_ns)
        event = self._event[kind]
        time_key = TIME_KEYS[kind]
        logs = [self._scope]
        for i, record in enumerate(records):
            try:
                body = self._attributes(record)
            except UnencodableError as e:
                if rejected is None:
                    raise
                rejected[i] = f"cannot encode as OTLP: {e}"
                continue
            when = record.get(time_key)
            stamp = b"\x09" + _pack_fixed64(when) if type(when) is int and when >= 0 else b""
            size = len(stamp) + len(observed) + len(body) + len(event)
            logs.append(b"".join((b"\x12", varint(size), stamp, observed, body, event)))
        scope_logs = b"".join(logs)
        resource_logs = self._resource + b"\x12" + varint(len(scope_logs)) + scope_logs
        return b"\x0a" + varint(len(resource_logs)) + resource_logs

    def cached_entries(self) -> int:
        """Attribute encodings held in the caches now."""
        return sum(len(cache) for cache in self._budget.caches)

    def cached_bytes(self) -> int:
        """What the caches hold now, as :class:`CacheBudget` charges it."""
        return self._budget.used

    def _attributes(self, record: Record) -> bytes:
        values = tuple(record.values())
        shape = tuple(record)
        learned = self._shapes.get(shape)
        if learned is None or tuple(map(type, values)) != learned[0]:
            learned = self._learn(shape, values)
        return b"".join(map(getitem, learned[1], values))

    def _learn(
        self, shape: tuple[str, ...], values: tuple[Any, ...]
    ) -> tuple[tuple[type, ...], Encoders]:
        types = tuple(map(type, values))
        resets = self._resets
        learned = (types, tuple(map(self._encoder, shape, types)))
        if self._resets != resets:
            # The table was emptied on the way: the encoders made before are no longer
            # the table's, nor their caches the budget's. Remembered, they grew with
            # every new value for as long as the shape was used; the next record of
            # the shape learns it again.
            return learned
        if len(self._shapes) >= self.SHAPE_LIMIT:
            self._shapes.clear()
        self._shapes[shape] = learned
        return learned

    def _encoder(self, key: str, t: type) -> AttributeCache | Uncached:
        """The one encoder of attribute ``key`` for values of type ``t``."""
        encoder = self._encoders.get((key, t))
        if encoder is None:
            if len(self._encoders) >= self.SHAPE_LIMIT:  # keys are user data: bounded
                self._encoders.clear()
                self._shapes.clear()
                self._budget.caches.clear()
                self._budget.used = 0
                self._resets += 1
            encoder = self._encoders[(key, t)] = self._new_encoder(key, t)
        return encoder

    def _new_encoder(self, key: str, t: type) -> AttributeCache | Uncached:
        encoder: AttributeCache | Uncached
        if t is int:
            encoder = IntAttributes(key, self._budget)
        elif t is str and key in UNCACHED_STRINGS:
            return UncachedStr(key)
        elif t is str:
            encoder = StrAttributes(key, self._budget)
        elif t is bool:
            encoder = AttributeCache(key, self._budget)
        elif t is list:
            encoder = ListAttributes(key, self._budget)
            self._budget.caches.append(encoder.cache)
            return encoder
        else:
            return Uncached(key)
        self._budget.caches.append(encoder)
        return encoder


def plain_attributes(record: Record) -> bytes:
    """Every non-null record value as a LogRecord attribute, encoded one by one: the
    reference for ``LogsEncoder``'s cached encoding."""
    return b"".join([_attribute(k, v) for k, v in record.items() if v is not None])


def _attribute(key: str, value: Any) -> bytes:
    """A LogRecord ``attributes`` field (field 6)."""
    try:
        return _field(0x32, key_value(key, value))
    except OutOfRangeError as e:
        raise OutOfRangeError(f"attribute {key}: {e}") from None
    except RecursionError:  # only nested values recurse, and all of them come here
        raise TooDeepError(f"attribute {key}: nested too deeply") from None


def resource_attributes(cluster_name: str) -> dict[str, str]:
    """``service.name=flowscope`` and ``k8s.cluster.name`` when configured."""
    out = {"service.name": "flowscope", "service.version": __version__}
    if cluster_name:
        out["k8s.cluster.name"] = cluster_name
    return out
