"""The hand-written OTLP encoder, checked with the official opentelemetry-proto parser."""

from __future__ import annotations

from typing import Any

from flowscope.exporter.otlp_encoding import (
    LogsEncoder,
    plain_attributes,
    resource_attributes,
    varint,
)
from flowscope.exporter.sink import Kind
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.unit.exporter.sample import dns, flow
from tests.unit.exporter.strategies import flow_records


def plain(value: AnyValue) -> Any:
    """An AnyValue back to a JSON value, failing on a type the encoder must not produce."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return [plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    raise AssertionError(f"unexpected AnyValue {which}")


def decode(data: bytes) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest.FromString(data)


def test_flow_records_become_log_records_attribute_by_attribute() -> None:
    records = [flow(i) for i in range(3)]
    req = decode(LogsEncoder(resource_attributes("prod-eu")).encode(Kind.FLOW, records, 77))
    (rl,) = req.resource_logs
    assert {kv.key: plain(kv.value) for kv in rl.resource.attributes} == {
        "service.name": "flowscope",
        "service.version": "0.1.0",
        "k8s.cluster.name": "prod-eu",
    }
    (sl,) = rl.scope_logs
    assert sl.scope.name == "flowscope.exporter"
    assert len(sl.log_records) == 3
    for record, lr in zip(records, sl.log_records, strict=True):
        assert lr.event_name == "flowscope.flow"
        assert lr.time_unix_nano == record["flow.end_ns"]
        assert lr.observed_time_unix_nano == 77
        attributes = {kv.key: plain(kv.value) for kv in lr.attributes}
        assert attributes == {**record, "event.name": "flowscope.flow"}
        types = {kv.key: kv.value.WhichOneof("value") for kv in lr.attributes}
        assert types["flow.bytes.delta"] == "int_value"
        assert types["source.port"] == "int_value"
        assert types["source.address"] == "string_value"
        assert types["flow.tcp.flags.tags"] == "array_value"


def test_dns_record_answers_are_a_list_of_kvlists() -> None:
    record = dns(5)
    req = decode(LogsEncoder(resource_attributes("")).encode(Kind.DNS, [record], 1))
    rl = req.resource_logs[0]
    assert "k8s.cluster.name" not in {kv.key for kv in rl.resource.attributes}
    lr = rl.scope_logs[0].log_records[0]
    assert lr.event_name == "flowscope.dns"
    assert lr.time_unix_nano == record["time_ns"]
    attributes = {kv.key: plain(kv.value) for kv in lr.attributes}
    assert attributes == {**record, "event.name": "flowscope.dns"}
    answers = next(kv.value for kv in lr.attributes if kv.key == "dns.answers")
    assert answers.array_value.values[0].kvlist_value.values[2].value.int_value == 30


def test_odd_values_keep_their_types() -> None:
    record = flow(1, **{"x.neg": -5, "x.big": 2**63 - 1, "x.flag": True, "x.ratio": 0.25,
                        "x.unicode": "München ✓", "x.empty": "", "x.none": None})  # fmt: skip
    lr = (
        decode(LogsEncoder({}).encode(Kind.FLOW, [record], 1))
        .resource_logs[0]
        .scope_logs[0]
        .log_records[0]
    )
    attributes = {kv.key: plain(kv.value) for kv in lr.attributes}
    assert attributes["x.neg"] == -5
    assert attributes["x.big"] == 2**63 - 1
    assert attributes["x.flag"] is True
    assert attributes["x.ratio"] == 0.25
    assert attributes["x.unicode"] == "München ✓"
    assert attributes["x.empty"] == ""
    assert "x.none" not in attributes


def test_cached_encoding_is_identical_to_fresh_encoding() -> None:
    records = [flow(i) for i in range(50)] + [flow(3)]
    warm = LogsEncoder(resource_attributes("c"))
    warm.encode(Kind.FLOW, records, 9)
    assert warm.encode(Kind.FLOW, records, 9) == LogsEncoder(resource_attributes("c")).encode(
        Kind.FLOW, records, 9
    )


def test_cache_stays_bounded() -> None:
    class Small(LogsEncoder):
        CACHE_BYTES = 20_000

    encoder = Small({})
    encoder.encode(Kind.FLOW, [flow(i, **{"x.id": f"v{i}"}) for i in range(500)], 1)
    assert 0 < encoder.cached_entries() < 500
    assert 0 < encoder.cached_bytes() <= 20_000


def test_cache_bounds_bytes_not_only_entries() -> None:
    """Long distinct values (anyone allowed to publish flows writes them) held 128 KB an
    entry under an entry count: 1 000 of them kept 260 MB after the batches were sent."""
    encoder = LogsEncoder({})
    big = [flow(i, **{"x.id": f"{i:06d}" + "x" * 131_072}) for i in range(400)]
    plain = LogsEncoder({}).encode(Kind.FLOW, big, 1)
    assert encoder.encode(Kind.FLOW, big, 1) == plain
    held = sum(len(v) for cache in encoder._budget.caches for v in cache.values())
    assert held < 1 << 20
    assert encoder.cached_bytes() <= LogsEncoder.CACHE_BYTES


def test_varint_matches_protobuf() -> None:
    for value in (0, 1, 127, 128, 300, 2**32, 2**63 - 1, -1, -(2**63)):
        encoded = AnyValue(int_value=value).SerializeToString()
        assert encoded == b"\x18" + varint(value)


class TinyCaches(LogsEncoder):
    CACHE_BYTES = 1_500  # caches emptied every few records: refilling must not change bytes


@settings(max_examples=150, deadline=None)
@given(records=st.lists(flow_records(odd_types=True), min_size=1, max_size=6))
def test_cached_attributes_are_the_plain_encoding(records: list[dict[str, Any]]) -> None:
    """Per-shape encoders and caches give byte for byte what encoding every attribute
    one by one gives — for odd types (1 vs True vs 1.0 in one key), None, nested
    values, large and negative ints, repeated shapes and warm or emptied caches."""
    for encoder in (LogsEncoder({}), TinyCaches({})):
        for record in records + records:
            assert encoder._attributes(record) == plain_attributes(record)


@given(value=st.integers(-(2**63), 2**64 - 1))
def test_varint_matches_protobuf_everywhere(value: int) -> None:
    if value < 2**63:
        assert AnyValue(int_value=value).SerializeToString() == b"\x18" + varint(value)
    else:  # uint64 range: protobuf's own field of that type
        assert b"\x18" + varint(value) == _uint64_field(value)


def _uint64_field(value: int) -> bytes:
    from google.protobuf.wrappers_pb2 import UInt64Value

    return UInt64Value(value=value).SerializeToString().replace(b"\x08", b"\x18", 1)


def test_integers_outside_int64_are_refused_naming_the_key() -> None:
    """int_value is int64: a u64 counter of 2**63 or more (valid in the record contract)
    would arrive as a negative number. Such a record is left out of the request and
    reported, whatever path its value takes (cached, large, nested, list, first or
    repeated shape); the others are encoded as usual."""
    cases = [
        ("flow.bytes.delta", 2**64 - 1000),
        ("flow.bytes.delta", 2**63),
        ("flow.packets", -(2**63) - 1),
        ("x.list", [1, 2**63]),
        ("x.object", {"inner": 2**64 - 1}),
    ]
    encoder = LogsEncoder({})
    for key, value in cases:
        records = [flow(0), flow(1, **{key: value}), flow(2)]
        for _ in range(2):  # a learned shape and a warm cache refuse it too
            rejected: dict[int, str] = {}
            request = decode(encoder.encode(Kind.FLOW, records, 1, rejected))
            assert list(rejected) == [1]
            assert rejected[1].startswith(f"cannot encode as OTLP: attribute {key}: ")
            assert "outside int64" in rejected[1]
            logs = request.resource_logs[0].scope_logs[0].log_records
            assert [lr.time_unix_nano for lr in logs] == [
                flow(0)["flow.end_ns"],
                flow(2)["flow.end_ns"],
            ]


def test_int64_limits_are_encoded() -> None:
    record = flow(1, **{"x.max": 2**63 - 1, "x.min": -(2**63)})
    rejected: dict[int, str] = {}
    lr = (
        decode(LogsEncoder({}).encode(Kind.FLOW, [record], 1, rejected))
        .resource_logs[0]
        .scope_logs[0]
        .log_records[0]
    )
    attributes = {kv.key: plain(kv.value) for kv in lr.attributes}
    assert not rejected
    assert (attributes["x.max"], attributes["x.min"]) == (2**63 - 1, -(2**63))
