"""The codec reads a body line by line: a value cut over two lines is refused, also when
another line holds two values and the body's record count still adds up."""

from __future__ import annotations

import orjson
import pytest
from flowscope.core import codec
from flowscope.core.errors import CodecError

from tests.unit.enricher.test_flowcore import NODE_1, A, B, flow, world

GOOD = orjson.dumps(flow(NODE_1, A, B, 40000, 443))
# Where a record is cut in two: inside a string value, inside a key, in an object where a
# comma belongs.
CUTS = [
    (b'"node-1"', b'"node\n1"'),
    (b'"observer"', b'"obs\nerver"'),
    (b',"sport"', b'\n"sport"'),
]


def spanning(cut: tuple[bytes, bytes]) -> bytes:
    """Two lines: a record cut over both, then a whole one after it on the second."""
    return GOOD.replace(*cut) + b"," + GOOD + b"\n"


def headers(count: int) -> dict[str, str]:
    return {codec.SCHEMA_HEADER: codec.RAW_FLOW.header, codec.COUNT_HEADER: str(count)}


@pytest.mark.parametrize("cut", CUTS)
def test_a_record_cut_over_two_lines_is_refused(cut: tuple[bytes, bytes]) -> None:
    body = spanning(cut)
    assert body.count(b"\n") == 2  # as many lines as the count header says
    with pytest.raises(CodecError, match="line 1"):
        codec.decode(codec.RAW_FLOW, headers(2), body)


def test_an_array_cut_over_two_lines_is_refused() -> None:
    body = b'{"a":[1\n2]},{"b":1}\n'
    with pytest.raises(CodecError, match="line 1"):
        codec.decode(codec.FLOW, {codec.SCHEMA_HEADER: "flow/1"}, body)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("cut", CUTS)
def test_the_enricher_refuses_a_raw_flow_message_cut_so(
    cut: tuple[bytes, bytes], native: bool
) -> None:
    """The compiled core hands a body whose lines are not records to ``codec.decode``."""
    w = world("kubernetes", native)
    with pytest.raises(CodecError, match="line 1"):
        w.enricher.flow_batch(headers(2), spanning(cut))
    assert not w.enricher.observers.seen  # no node learned from it


def test_the_faulty_line_is_named() -> None:
    body = GOOD + b"\n" + GOOD + b"," + GOOD + b"\n" + b"{\n"
    with pytest.raises(CodecError, match="line 2 holds more than one JSON value"):
        codec.decode_body(body)
    with pytest.raises(CodecError, match="line 3: "):
        codec.decode_body(GOOD + b"\n" + GOOD + b"\n" + b"{\n")
    with pytest.raises(CodecError, match="line 2 is not a JSON object"):
        codec.decode_body(GOOD + b"\n" + b"[1]\n")
