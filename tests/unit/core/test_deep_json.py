"""codec's JSON writer for records nested deeper than orjson writes: the same text as
``orjson.dumps`` wherever orjson can write it, any depth the decoder reads."""

from __future__ import annotations

from typing import Any

import orjson
from flowscope.core import codec
from flowscope.core.codec import deep_json
from hypothesis import given, settings

from tests.unit.exporter.strategies import flow_records, json_values


@settings(max_examples=200, deadline=None)
@given(value=json_values | flow_records(odd_types=True))
def test_deep_json_writes_what_orjson_writes(value: Any) -> None:
    assert deep_json(value) == orjson.dumps(value)


def test_records_nested_as_deep_as_the_decoder_reads_are_written() -> None:
    text = b'{"a":1,"x.deep":' + b'[{"k":' * 510 + b"[]" + b"}]" * 510 + b"}"
    [record] = codec.decode_body(text + b"\n")  # 1,022 levels: the most it reads
    lines = [b'{"b":2}\n', text + b"\n"]
    assert codec.encode_lines([{"b": 2}, record]) == lines
    assert codec.encode(codec.FLOW, iter([{"b": 2}, record])).body == b"".join(lines)
