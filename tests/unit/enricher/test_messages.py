"""The enriched messages of one raw batch (``Pipeline._messages``): bodies, headers and
``Nats-Msg-Id`` exactly as the codec's chunking names them, whatever the sizes."""

from __future__ import annotations

import logging
from typing import Any

from flowscope.core import codec
from flowscope.core.logs import RateLimitedLog
from flowscope.enricher.consuming import MSG_ID_HEADER, Pipeline
from flowscope.enricher.enriching import Output
from flowscope.enricher.publishing import Message, encode, frame_lines
from hypothesis import given
from hypothesis import strategies as st

line = st.binary(max_size=60).map(lambda b: b'{"x":"' + b.hex().encode() + b'"}\n')
lines = st.dictionaries(st.sampled_from([f"flowscope.flows.a.b{i}" for i in range(6)]),
                        st.lists(line, min_size=1, max_size=12), max_size=6)  # fmt: skip
records = st.dictionaries(st.sampled_from(["flowscope.dns.a", "flowscope.dns.b"]),
                          st.lists(st.fixed_dictionaries({"n": st.integers(-(2**63), 2**64 - 1)}), max_size=5),
                          max_size=2)  # fmt: skip


def reference(schema: codec.Schema, output: Output, seq: int, max_bytes: int) -> list[Message]:
    """Every chunk the codec makes, with its headers and ``Nats-Msg-Id`` added."""
    groups: list[tuple[str, Any]] = [
        *((s, codec.encode_chunks(schema, r, max_bytes)) for s, r in output.by_subject.items()),
        *((s, codec.chunk_lines(schema, ls, max_bytes)) for s, ls in output.lines.items()),
    ]
    made = [
        (subject, batch.body,
         {**batch.headers, MSG_ID_HEADER: f"enricher:{schema.name}:{seq}:{subject}:{n}"})
        for subject, batches in groups
        for n, batch in enumerate(batches)
    ]  # fmt: skip
    if made:  # the last one carries the raw batch's marker (Pipeline._publish)
        made[-1][2][MSG_ID_HEADER] = f"enricher:{schema.name}:{seq}:done"
    return made


def pipeline(max_bytes: int) -> Pipeline:
    made = Pipeline.__new__(Pipeline)  # only the chunk size and markers matter to _messages
    made.max_bytes = max_bytes
    made.markers = True
    return made


@given(lines, records, st.integers(200, 2000), st.integers(0, 2**40))
def test_messages_are_the_codecs_chunks_with_their_ids(
    by_lines: dict[str, list[bytes]], by_records: dict[str, list[dict[str, Any]]],
    max_bytes: int, seq: int,
) -> None:  # fmt: skip
    output = Output(by_subject=by_records, lines=by_lines)
    got = pipeline(max_bytes)._messages(codec.FLOW, output, seq)
    assert got == reference(codec.FLOW, output, seq, max_bytes)


subjects = st.one_of(
    st.sampled_from([f"flowscope.flows.ns-{i}.ns-{i % 3}" for i in range(6)]),
    st.sampled_from(["flowscope.flows.ü.b", "a b", "", "flowscope.flows.a\tb"]),  # not plain
)


@given(
    st.dictionaries(subjects, st.lists(line, max_size=12), max_size=8),
    st.integers(200, 2000),
    st.integers(0, 2**40),
    st.sampled_from(["_INBOX.abc.7", "_INBOX.x y", ""]),
)
def test_the_compiled_frame_is_the_encoded_messages(
    by_lines: dict[str, list[bytes]], max_bytes: int, seq: int, reply: str
) -> None:
    """``frame_lines`` (the compiled core's framing of a raw batch's flow lines) writes
    exactly what ``encode`` writes for ``_messages``' messages, or leaves them to it."""
    output = Output(lines=by_lines)
    messages = pipeline(max_bytes)._messages(codec.FLOW, output, seq)
    msg_id = f"enricher:{codec.FLOW.name}:{seq}:"
    framed = frame_lines(by_lines, codec.FLOW.header, msg_id, "done", "b1", reply, max_bytes)
    plain = (
        all(s.isascii() and s.isprintable() and " " not in s and s for s in by_lines)
        and all(by_lines.values())
        and all(sum(map(len, ls)) <= max_bytes for ls in by_lines.values())
        and reply.isascii() and reply.isprintable() and " " not in reply and reply != ""
    )  # fmt: skip
    if not plain or not by_lines:
        assert framed is None
        return
    assert framed is not None
    data, count, body_bytes = framed
    replies = [""] * (len(messages) - 1) + [reply]
    assert data == encode(messages, replies, "b1", 1 << 30)
    assert count == len(messages) == len(by_lines)
    assert body_bytes == sum(len(body) for _, body, _ in messages)


def test_an_oversize_record_is_dropped_alone() -> None:
    """A record larger than one message is dropped (and counted); the other records of
    its subject are published, numbered as if it had never been there."""
    made = pipeline(300)
    made.bad_log = RateLimitedLog(logging.getLogger("test"))
    small = [b'{"n":%d}\n' % n for n in range(40)]
    huge = b'{"pad":"' + b"x" * 400 + b'"}\n'
    output = Output(lines={"flowscope.flows.a.b": [small[0], huge, *small[1:], huge],
                           "flowscope.flows.a.c": small[:3]})  # fmt: skip
    got = made._messages(codec.FLOW, output, 7)
    assert output.oversize == 2
    expected = Output(lines={"flowscope.flows.a.b": small, "flowscope.flows.a.c": small[:3]})
    assert got == reference(codec.FLOW, expected, 7, 300)
    assert sum(int(headers[codec.COUNT_HEADER]) for _, _, headers in got) == 43
    made._messages(codec.FLOW, output, 7)  # counted once per attempt, not summed
    assert output.oversize == 2
