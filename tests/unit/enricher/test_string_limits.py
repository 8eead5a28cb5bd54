"""Raw string fields are bounded (docs/records.md): a socket event's comm and container
id, a DNS exchange's names and codes, and its answers in number. The join tables bound
their entries by count, which bounds memory only if each entry's strings are bounded
too; a longer string (or a longer list) is a bad record (dead-lettered), and the longest
the collector itself writes is accepted. So are the DNS numbers the parser writes: a
value outside their range is a bad record."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from flowscope.collector import socket_tracing as st
from flowscope.collector.abi import SOCK_CONNECT
from flowscope.collector.dns_parsing import DnsParseError, parse_message, qtype_name, rcode_name
from flowscope.enricher.enriching import (
    MAX_COMM,
    MAX_CONTAINER_ID,
    MAX_DNS_ANSWERS,
    MAX_DNS_CODE,
    MAX_DNS_NAME,
    MAX_DNS_TTL,
)

from tests.unit.enricher.test_enriching import A, answered, enricher, sock

QUERY = struct.pack("!HHHHHH", 7, 0x8180, 1, 2, 0, 0)


def collector_comm(raw: bytes) -> str:
    """The comm the collector writes for the kernel's char[16] ``raw``."""
    event: list[Any] = [0] * 15
    event[st.E_EVENT], event[st.E_FAMILY], event[st.E_PROTO] = SOCK_CONNECT, 2, 6
    event[st.E_SADDR] = event[st.E_DADDR] = bytes(16)
    event[st.E_COMM] = raw
    return str(st.socket_wire(tuple(event), "node-1", 0, "")["comm"])


def wire_name(*sizes: int) -> bytes:
    """A name of labels of ``sizes`` octets, each octet one the parser writes as \\DDD."""
    return b"".join(bytes([size]) + bytes(size) for size in sizes) + b"\0"


def longest_exchange() -> dict[str, Any]:
    """A raw DNS exchange as the collector writes it from a response whose question and
    CNAME target are the longest names its parser produces: 250 octets in the fewest
    labels (63, 63, 63, 61: 255 wire octets with the length octets and the root's), all
    written \\DDD."""
    longest = wire_name(63, 63, 63, 61)
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 30, len(longest)) + longest
    target = 12 + len(longest) + 4 + len(cname) - len(longest)  # the CNAME's data
    address = struct.pack("!HHHIH", 0xC000 | target, 1, 1, 30, 4) + bytes([10, 1, 0, 9])
    msg = parse_message(QUERY + longest + struct.pack("!HH", 1, 1) + cname + address)
    return {"observer": "node-1", "time_ns": 1, "id": msg.id, "qname": msg.qname,
            "qtype": msg.qtype, "rcode": msg.rcode, "client": A, "client_port": 3333,
            "server": "10.96.0.10", "server_port": 53,
            "answers": [a.to_wire() for a in msg.answers]}  # fmt: skip


def test_the_longest_comm_the_collector_writes_is_accepted() -> None:
    """A char[16] with no NUL and no valid UTF-8: 16 replacement characters."""
    comm = collector_comm(b"\xff" * 16)
    assert len(comm) == MAX_COMM == 16
    e = enricher()
    record = sock("node-1", "connect", A, 1, "10.1.0.9", 80, 7)
    assert e.learn_sockets([{**record, "comm": comm}]) == []
    owner = e.sockets.find("node-1", 6, A, 1, "10.1.0.9", 80)
    assert owner is not None and owner.comm == comm


@pytest.mark.parametrize(
    ("field", "value"),
    [("comm", "x" * (MAX_COMM + 1)), ("comm", "x" * 262_144),
     ("container_id", "c" * (MAX_CONTAINER_ID + 1))],
    ids=["comm", "comm-huge", "container_id"],
)  # fmt: skip
def test_socket_event_with_a_longer_string_is_bad_and_not_learned(field: str, value: str) -> None:
    e = enricher()
    record = {**sock("node-1", "connect", A, 1, "10.1.0.9", 80, 7), field: value}
    for bad in (e.check_sockets([record]), e.learn_sockets([record])):
        assert [r for r, _ in bad] == [record]
        assert field in str(bad[0][1])
    assert len(e.sockets) == 0


def test_a_64_digit_container_id_is_accepted() -> None:
    e = enricher()
    record = sock("node-1", "connect", A, 1, "10.1.0.9", 80, 7, cid="0123456789abcdef" * 4)
    assert e.learn_sockets([record]) == [] and len(e.sockets) == 1
    assert MAX_CONTAINER_ID == 128


def test_the_longest_name_the_dns_parser_writes_is_accepted() -> None:
    exchange = longest_exchange()
    assert len(exchange["qname"]) == MAX_DNS_NAME == 1003
    assert [len(a["data"]) for a in exchange["answers"]] == [MAX_DNS_NAME, 8]
    with pytest.raises(DnsParseError):  # one octet more is over the 255 wire octets
        parse_message(QUERY[:4] + b"\0\1\0\0\0\0\0\0" + wire_name(63, 63, 63, 62) + b"\0\1\0\1")
    e = enricher()
    assert e.learn_dns([exchange]) == []
    assert len(e.names) == 1
    assert not e.dns([exchange]).bad


@pytest.mark.parametrize("where", ["qname", "name", "data", "qname-huge"])
def test_dns_exchange_with_a_longer_name_is_bad_and_not_learned(where: str) -> None:
    e = enricher()
    long = "a" * (262_144 if where == "qname-huge" else MAX_DNS_NAME + 1)
    record = answered("node-1", A, "db.example", "10.1.0.9")
    if where.startswith("qname"):
        record["qname"] = long
    else:
        record["answers"][0][where] = long
    bad = e.learn_dns([record])
    assert [r for r, _ in bad] == [record]
    assert len(e.names) == 0
    assert [r for r, _ in e.dns([record]).bad] == [record]


def exchange_of(msg: bytes) -> dict[str, Any]:
    """The raw DNS exchange the collector writes for the response ``msg``."""
    parsed = parse_message(msg)
    return {"observer": "node-1", "time_ns": 1, "id": parsed.id, "qname": parsed.qname,
            "qtype": parsed.qtype, "rcode": parsed.rcode, "client": A, "client_port": 3333,
            "server": "10.96.0.10", "server_port": 53, "latency_ns": 0,
            "answers": [a.to_wire() for a in parsed.answers]}  # fmt: skip


def test_the_most_answers_the_dns_parser_writes_are_accepted() -> None:
    """The shortest answer the parser keeps: the root's CNAME to the root, 12 octets; a
    message (no question) holds as many as fit in 65 535 octets, a DNS message's most."""
    answer = b"\0" + struct.pack("!HHIH", 5, 1, 30, 1) + b"\0"
    msg = struct.pack("!HHHHHH", 7, 0x8180, 0, MAX_DNS_ANSWERS, 0, 0) + answer * MAX_DNS_ANSWERS
    assert len(msg) <= 65_535 < len(msg) + len(answer)
    exchange = exchange_of(msg)
    assert len(exchange["answers"]) == MAX_DNS_ANSWERS
    e = enricher()
    assert e.learn_dns([exchange]) == []
    out = e.dns([exchange])
    assert not out.bad
    (records,) = out.by_subject.values()
    assert len(records[0]["dns.answers"]) == MAX_DNS_ANSWERS


@pytest.mark.parametrize("count", [MAX_DNS_ANSWERS + 1, 1_000_000])
def test_dns_exchange_with_more_answers_is_bad_and_not_learned(count: int) -> None:
    """One record's answers would otherwise take the whole name cache (and the CPU)."""
    e = enricher()
    e.learn_dns([answered("node-1", A, "kept.example", "10.1.0.7")])
    record = answered("node-1", A, "db.example", "10.1.0.9")
    record["answers"] = record["answers"] * count
    bad = e.learn_dns([record])
    assert [r for r, _ in bad] == [record]
    assert f"more than {MAX_DNS_ANSWERS} answers" in str(bad[0][1])
    assert e.names.lookup(A, "10.1.0.7") == "kept.example"
    assert e.names.lookup(A, "10.1.0.9") is None
    assert [r for r, _ in e.dns([record]).bad] == [record]


def test_the_longest_codes_and_largest_numbers_the_dns_parser_writes_are_accepted() -> None:
    """Every type and response code the parser can name (an extended rcode has 12 bits),
    the largest id and the largest TTL (one with the top bit set is written as 0)."""
    longest_type = max(map(qtype_name, range(65_536)), key=len)
    longest_rcode = max(map(rcode_name, range(4096)), key=len)
    assert len(longest_type) <= MAX_DNS_CODE and len(longest_rcode) <= MAX_DNS_CODE
    address = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, MAX_DNS_TTL, 4) + bytes([10, 1, 0, 9])
    question = b"\2db\7example\0" + struct.pack("!HH", 1, 1)
    exchange = exchange_of(struct.pack("!HHHHHH", 65_535, 0x8180, 1, 1, 0, 0) + question + address)
    assert (exchange["id"], exchange["answers"][0]["ttl"]) == (65_535, MAX_DNS_TTL)
    exchange.update(qtype=longest_type, rcode=longest_rcode)
    e = enricher()
    assert e.learn_dns([exchange]) == []
    assert e.names.lookup(A, "10.1.0.9") == "db.example"
    (records,) = e.dns([exchange]).by_subject.values()
    assert records[0]["dns.question.type"] == longest_type
    assert records[0]["dns.response_code"] == longest_rcode


@pytest.mark.parametrize(
    ("where", "value"),
    [("qtype", "A" * (MAX_DNS_CODE + 1)), ("qtype", "A" * 262_144),
     ("rcode", "N" * (MAX_DNS_CODE + 1)), ("type", "A" * (MAX_DNS_CODE + 1)),
     ("type", "A" * 262_144), ("id", -1), ("id", 65_536), ("latency_ns", -1),
     ("ttl", -1), ("ttl", MAX_DNS_TTL + 1), ("ttl", 2**64 - 1)],
    ids=["qtype", "qtype-huge", "rcode", "answer-type", "answer-type-huge", "id-negative",
         "id-large", "latency-negative", "ttl-negative", "ttl-large", "ttl-u64"],
)  # fmt: skip
def test_dns_exchange_with_a_longer_code_or_a_number_out_of_range_is_bad(
    where: str, value: Any
) -> None:
    e = enricher()
    record = answered("node-1", A, "db.example", "10.1.0.9")
    (record["answers"][0] if where in ("type", "ttl") else record)[where] = value
    bad = e.learn_dns([record])
    assert [r for r, _ in bad] == [record]
    assert where.split("_")[0] in str(bad[0][1])
    assert len(e.names) == 0
    assert [r for r, _ in e.dns([record]).bad] == [record]
