"""Several raw batches' lines as one: ``merge_lines`` joins compiled ``Lines``, and the
framing's tail ids (``last_id`` a tuple) give the last messages whole ids of their own,
byte for byte what ``encode`` writes for those messages."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flowscope.core import codec
from flowscope.core.messaging import MSG_ID_HEADER
from flowscope.enricher import _flowcore
from flowscope.enricher.consuming import Pipeline, msg_id_prefix
from flowscope.enricher.enriching import Enricher, Observers, Output
from flowscope.enricher.identities import Identity, identity
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.publishing import (
    BATCH_COMMIT,
    BATCH_ID,
    BATCH_SEQUENCE,
    COUNT_HEADER,
    SCHEMA_HEADER,
    encode,
)

from tests.unit.enricher.test_flowcore import GOOD, Plain, message

RAW_ID = "r7"
REPLY = "_INBOX.r.1"


class ByOctet(Plain):
    """Every address a pod whose namespace is its last octet: the pairs of addresses
    make the subjects."""

    def resolve(self, address: str) -> Identity:
        return identity("pod", f"ns-{address.rsplit('.', 1)[-1]}", "", address, {})


def rendered(*pairs: tuple[int, int]) -> _flowcore.Lines:
    """The compiled core's Lines of one raw batch: a flow from 10.0.0.<a> to 10.0.0.<b>
    for each pair, in order (a fresh enricher: no flow is a duplicate)."""
    enricher = Enricher(ByOctet(), SocketTable(8, 30), NameCache(5, 60, 6), Observers(300))
    records = [
        orjson.dumps({**GOOD, "src": f"10.0.0.{a}", "dst": f"10.0.0.{b}", "sport": 1000 + i})
        for i, (a, b) in enumerate(pairs)
    ]
    out = enricher.flow_batch(*message(records))
    assert isinstance(out.rendered, _flowcore.Lines) and out.rendered.count == len(pairs)
    return out.rendered


def concatenated(parts: list[_flowcore.Lines]) -> dict[str, list[bytes]]:
    """Each subject's lines of all parts, part after part; subjects as they first come."""
    out: dict[str, list[bytes]] = {}
    for part in parts:
        for subject, lines in part.lines().items():
            out.setdefault(subject, []).extend(lines)
    return out


def snapshot(lines: _flowcore.Lines) -> tuple[Any, ...]:
    return lines.lines(), lines.subjects, lines.count, len(lines)


P1 = ((1, 2), (1, 3), (1, 2), (4, 5))
P2 = ((4, 5), (6, 7), (1, 2))
P3 = ((8, 9), (1, 3), (8, 9))


@pytest.mark.parametrize("groups", [[P1], [P1, P2], [P1, P2, P3], [P3, P3], [P2, P1, P2]])
def test_merged_lines_are_the_parts_lines_in_order(groups: list[Any]) -> None:
    parts = [rendered(*pairs) for pairs in groups]
    before = [snapshot(part) for part in parts]
    for given in (parts, tuple(parts)):
        merged = _flowcore.merge_lines(given)
        expected = concatenated(parts)
        assert isinstance(merged, _flowcore.Lines) and all(merged is not p for p in parts)
        assert merged.lines() == expected
        assert merged.subjects == tuple(expected) and len(merged) == len(expected)
        assert merged.count == sum(part.count for part in parts)
        # its chains are what a framing walks: the same frame as the dict of its lines
        args = (*texts(), b"done", REPLY, 1 << 20)
        assert _flowcore.frame_atomic(merged, *args) == _flowcore.frame_atomic(expected, *args)
    assert [snapshot(part) for part in parts] == before


def test_a_part_without_lines_adds_none() -> None:
    enricher = Enricher(ByOctet(), SocketTable(8, 30), NameCache(5, 60, 6), Observers(300))
    bad = enricher.flow_batch(*message([orjson.dumps({**GOOD, "end_reason": "bogus"})]))
    empty = bad.rendered
    assert isinstance(empty, _flowcore.Lines) and empty.count == 0 and len(bad.bad) == 1
    one = rendered(*P1)
    for parts in ([empty], [empty, one, empty], [one, empty]):
        merged = _flowcore.merge_lines(parts)
        assert merged.lines() == concatenated(parts) and merged.count == sum(p.count for p in parts)
    assert _flowcore.merge_lines([empty]).subjects == ()


def test_distinct_subjects_follow_each_other() -> None:
    one, other = rendered((1, 2), (1, 3)), rendered((4, 5), (1, 2))
    merged = _flowcore.merge_lines([one, other])
    assert merged.subjects == (*one.subjects, other.subjects[0])
    assert merged.lines() == concatenated([one, other])


@pytest.mark.parametrize(
    "parts", [[], (), None, "x", {"a": 1}, [{"a": [b"x"]}], "lines", [1], "mixed"]
)
def test_merge_lines_takes_a_list_or_tuple_of_lines(parts: Any) -> None:
    if parts == "lines":
        parts = rendered((1, 2))  # a Lines, not a list of them
    elif parts == "mixed":
        parts = [rendered((1, 2)), {"a": [b"x"]}]
    with pytest.raises(TypeError, match=r"merge_lines\(parts"):
        _flowcore.merge_lines(parts)


# ---------------------------------------------------------------- tail ids


def texts(msg_id: str | None = None) -> tuple[bytes, bytes, bytes, bytes]:
    """The header text around the count, subject and sequence, and the commit, as
    publishing frames a raw batch's lines."""
    msg_id = msg_id_prefix(codec.FLOW, RAW_ID) if msg_id is None else msg_id
    return (
        f"{SCHEMA_HEADER}: {codec.FLOW.header}\r\n{COUNT_HEADER}: ".encode(),
        f"\r\n{MSG_ID_HEADER}: {msg_id}".encode(),
        f"\r\n{BATCH_ID}: b1\r\n{BATCH_SEQUENCE}: ".encode(),
        f"{BATCH_COMMIT}: 1\r\n".encode(),
    )


def encoded(lines: dict[str, list[bytes]], tail: tuple[str, ...]) -> bytes | None:
    """``encode`` of ``Pipeline._messages``' messages of ``lines``, the last ones'
    ``Nats-Msg-Id`` replaced by the tail ids."""
    made = Pipeline.__new__(Pipeline)  # only the chunk size and markers matter to _messages
    made.max_bytes = 1 << 20
    made.markers = True
    messages = made._messages(codec.FLOW, Output(lines=lines), RAW_ID)
    for (_, _, headers), tail_id in zip(messages[len(messages) - len(tail) :], tail, strict=True):
        headers[MSG_ID_HEADER] = tail_id
    replies = [""] * (len(messages) - 1) + [REPLY]
    return encode(messages, replies, "b1", 1 << 30)


def framings(lines: _flowcore.Lines, last_id: bytes | tuple[bytes, ...]) -> list[Any]:
    """frame_atomic of the Lines and of its dict, and gather_atomic's bytes (each as
    (data, messages, body bytes), or None)."""
    args = (*texts(), last_id, REPLY, 1 << 20)
    gathered = _flowcore.gather_atomic(lines, *args)
    return [
        _flowcore.frame_atomic(lines, *args),
        _flowcore.frame_atomic(lines.lines(), *args),
        None if gathered is None else (gathered[0].rest(), *gathered[1:]),
    ]


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_tail_ids_are_the_last_messages_whole_ids(k: int) -> None:
    lines = rendered(*P1, *P2, *P3)  # five subjects: five messages
    assert len(lines) == 5
    tail = tuple(f"enricher:flow:r{i}:done" for i in range(k))
    expected = encoded(lines.lines(), tail)
    assert expected is not None
    body = sum(map(len, [line for ls in lines.lines().values() for line in ls]))
    for framed in framings(lines, tuple(t.encode() for t in tail)):
        assert framed == (expected, 5, body)


def test_long_tail_ids() -> None:
    lines = rendered(*P1, *P2)  # four subjects
    tail = ("x" * 20_000, "y" * 30_000)  # far over the room of a head without them
    expected = encoded(lines.lines(), tail)
    for framed in framings(lines, tuple(t.encode() for t in tail)):
        assert framed is not None and framed[0] == expected


def test_as_many_tail_ids_as_messages() -> None:
    lines = rendered(*P2)  # three subjects
    tail = ("a:1", "enricher:flow:x:y:z", "b")
    expected = encoded(lines.lines(), tail)
    for framed in framings(lines, tuple(t.encode() for t in tail)):
        assert framed is not None and framed[0] == expected and framed[1] == 3


@pytest.mark.parametrize("groups", [[P2], [P1, P2, P3]])
def test_more_tail_ids_than_messages_is_left_to_python(groups: list[Any]) -> None:
    lines = _flowcore.merge_lines([rendered(*pairs) for pairs in groups])
    tail = tuple(b"id-%d" % i for i in range(len(lines) + 1))
    assert framings(lines, tail) == [None, None, None]
    assert framings(lines, tail[1:])[0] is not None


def test_one_tail_id_of_one_message() -> None:
    lines = rendered((1, 2), (1, 2))
    expected = encoded(lines.lines(), ("whole",))
    assert [f and f[0] for f in framings(lines, (b"whole",))] == [expected] * 3
    assert framings(lines, (b"whole", b"two")) == [None, None, None]


def test_a_bytes_last_id_ends_the_commits_id_as_before() -> None:
    lines = rendered(*P1)
    prefix = msg_id_prefix(codec.FLOW, RAW_ID)
    expected = encoded(lines.lines(), (prefix + "done",))
    for framed in framings(lines, b"done"):
        assert framed is not None and framed[0] == expected


def test_tail_ids_with_a_msg_id_text_without_its_header_are_left_to_python() -> None:
    lines = rendered(*P1)
    args = (texts()[0], b"no-header", *texts()[2:], (b"x",), REPLY, 1 << 20)
    assert _flowcore.frame_atomic(lines, *args) is None
    assert _flowcore.gather_atomic(lines, *args) is None


@pytest.mark.parametrize("last_id", [(), (b"x", "y"), ("x",), [b"x"], "x", None])
def test_last_id_is_bytes_or_a_tuple_of_bytes(last_id: Any) -> None:
    lines = rendered(*P1)
    for frame in (_flowcore.frame_atomic, _flowcore.gather_atomic):
        with pytest.raises(TypeError, match=r"last_id: bytes \| tuple\[bytes, \.\.\.\]"):
            frame(lines, *texts(), last_id, REPLY, 1 << 20)
