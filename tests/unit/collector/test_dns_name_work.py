"""Decompressing names costs work in proportion to the message, not its square.

A hostile message can make every one of its names a pointer to a long name (127 labels)
or to the end of a long chain of pointers: each name is 2 bytes on the wire but, read
from scratch, costs as many steps as the chain or the long name has. A DNS packet from
the wire must not cost the collector a hundred times what an ordinary one of the same
size does. The work is counted as lines the parser executes (``sys.settrace``), which
is deterministic, rather than timed.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import dnslib
import pytest
from flowscope.collector import dns_parsing
from flowscope.collector.dns_parsing import parse_message

SIZE = 4000  # bytes of DNS message (dns.capture_bytes allows 4096 from the IP header on)
QUESTION = struct.pack("!HH", 1, 1)  # type A, class IN
# Lines per message byte the parser may spend, at most, on a hostile message compared
# with an ordinary one of about the same size (plain names, no compression).
MAX_RATIO = 4


def header(qdcount: int, ancount: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 7, flags, qdcount, ancount, 0, 0)


def plain_questions() -> bytes:
    """An ordinary query-shaped message: questions with 10-byte names, no pointers."""
    body, count = b"", 0
    while 12 + len(body) + 16 <= SIZE:
        body += b"\x03abc\x04defg\x00" + QUESTION
        count += 1
    return header(count) + body


def pointer_chain() -> bytes:
    """Question k's name is a pointer to question k-1's name: a chain as long as the
    message (every pointer goes strictly backwards, as the parser requires)."""
    body, previous, count = b"\x00" + QUESTION, 12, 1
    while 12 + len(body) + 6 <= SIZE:
        here = 12 + len(body)
        body += struct.pack("!H", 0xC000 | previous) + QUESTION
        previous, count = here, count + 1
    return header(count) + body


def long_name_answers() -> bytes:
    """A response whose A records all carry one 127-label name by a pointer to it."""
    body = b"\x01a" * 127 + b"\x00" + QUESTION
    record = struct.pack("!HHHIH", 0xC000 | 12, 1, 1, 60, 4) + bytes([10, 0, 0, 1])
    count = 0
    while 12 + len(body) + len(record) <= SIZE:
        body += record
        count += 1
    return header(1, count, flags=0x8180) + body


def lines_executed(parse: Callable[[], Any]) -> int:
    """How many lines of dns_parsing run while ``parse()`` does."""
    count = 0

    def trace(frame: FrameType, event: str, _arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != dns_parsing.__file__:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        parse()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("hostile", [pointer_chain, long_name_answers])
def test_hostile_compression_costs_about_what_an_ordinary_message_does(
    hostile: Callable[[], bytes],
) -> None:
    ordinary = plain_questions()
    message = hostile()
    baseline = lines_executed(lambda: parse_message(ordinary)) / len(ordinary)
    work = lines_executed(lambda: parse_message(message)) / len(message)
    assert work <= MAX_RATIO * baseline, f"{work:.1f} lines per byte, ordinary {baseline:.1f}"


def test_long_name_answers_are_all_read_in_full() -> None:
    message = parse_message(long_name_answers())
    name = ".".join(["a"] * 127)
    assert message.qname == name
    assert len(message.answers) > 100
    assert {(answer.name, answer.data) for answer in message.answers} == {(name, "10.0.0.1")}


def test_pointer_chain_names_are_the_root() -> None:
    assert parse_message(pointer_chain()).qname == "."


def test_names_sharing_suffixes_read_as_written() -> None:
    """Names compressed into one another at several depths (dnslib compresses every
    suffix it has written) decode as they were written, each time they recur."""
    reply = dnslib.DNSRecord.question("www.example.com", "A").reply()
    names = ["www.example.com", "cdn.example.com", "a.cdn.example.com", "example.com"]
    for i, name in enumerate(names * 3):
        reply.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(f"10.0.0.{i}"), ttl=i))
    reply.add_answer(
        dnslib.RR(
            "x.a.cdn.example.com", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("a.cdn.example.com")
        )
    )
    got = [(a.name, a.data) for a in parse_message(reply.pack()).answers]
    want = [(name, f"10.0.0.{i}") for i, name in enumerate(names * 3)]
    assert got == [*want, ("x.a.cdn.example.com", "a.cdn.example.com")]


def test_a_long_name_is_still_refused_when_its_suffix_was_read_before() -> None:
    """The 255-byte limit holds for a name whose suffix was read earlier on its own."""
    suffix = b"\x3f" + b"b" * 63  # 64 wire bytes
    long_suffix = suffix * 3 + b"\x00"  # 193 wire bytes: a valid name
    owner = b"\x3f" + b"c" * 63 + struct.pack("!H", 0xC000 | 12)  # 64 + 193 > 255
    record = owner + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
    message = header(1, 1, flags=0x8180) + long_suffix + QUESTION + record
    with pytest.raises(dns_parsing.DnsParseError) as error:
        parse_message(message)
    assert error.value.reason == "long-name"


def test_a_name_read_before_does_not_excuse_a_pointer_that_does_not_go_back() -> None:
    """Labels read before from one name's start, reached by another name that started
    lower, still end in the same pointer, which must point below the later name's start.

    Inside a skipped record's data: at 28 a 1-byte label whose content is the length
    byte at 29; at 29 a 6-byte label holding (at 30) "j", (at 32) "x" and (at 34) a
    pointer to 29; the root at 36. Read from 30 that is j.x. and the 6-byte label (the
    pointer goes back below 30); read from 28 the same pointer points above 28.
    """
    gadget = b"\x01\x06\x01j\x01x\xc0\x1d\x00"
    skipped = b"\x00" + struct.pack("!HHIH", 16, 1, 60, len(gadget)) + gadget  # TXT at 17
    from_30 = b"\x00" + struct.pack("!HHIHH", 5, 1, 60, 2, 0xC000 | 30)
    from_28 = b"\x00" + struct.pack("!HHIHH", 5, 1, 60, 2, 0xC000 | 28)
    ok = header(1, 2, flags=0x8180) + b"\x00" + QUESTION + skipped + from_30
    assert [a.data for a in parse_message(ok).answers] == ["j.x.\\001j\\001x\\192\\029"]
    with pytest.raises(dns_parsing.DnsParseError) as error:
        parse_message(header(1, 3, flags=0x8180) + b"\x00" + QUESTION + skipped + from_30 + from_28)
    assert error.value.reason == "bad-pointer"
