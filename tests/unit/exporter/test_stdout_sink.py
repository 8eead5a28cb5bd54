"""The stdout sink: exact NDJSON lines, and a reader that goes away."""

from __future__ import annotations

import os

import orjson
import pytest
from flowscope.exporter.sink import Kind, SinkClosedError
from flowscope.exporter.stdout import StdoutSink

from tests.unit.exporter.sample import dns, flow


async def test_one_line_per_record_exactly_the_contract_keys() -> None:
    read_end, write_end = os.pipe()
    sink = StdoutSink(write_end)
    records = [flow(1), flow(2)]
    await sink.export(Kind.FLOW, records)
    await sink.export(Kind.DNS, [dns(1)])
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        lines = reader.read().splitlines()
    assert [orjson.loads(line) for line in lines] == [*records, dns(1)]


async def test_a_closed_pipe_closes_the_sink() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    sink = StdoutSink(write_end)
    with pytest.raises(SinkClosedError):
        await sink.export(Kind.FLOW, [flow(1)])
    with pytest.raises(SinkClosedError):
        await sink.export(Kind.FLOW, [flow(2)])
    os.write(write_end, b"x")  # now /dev/null: the interpreter's exit flush cannot fail
    os.close(write_end)


async def test_message_bodies_are_written_as_they_came() -> None:
    read_end, write_end = os.pipe()
    sink = StdoutSink(write_end)
    first = b'{"a": "\\u00e9"}\n{"b":1}\n'  # valid NDJSON, not as orjson writes it
    await sink.export_lines(Kind.FLOW, [first, b'{"c":2}\n'], 3)
    await sink.export(Kind.FLOW, [{"d": "é"}])
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read() == first + b'{"c":2}\n' + '{"d":"é"}\n'.encode()
