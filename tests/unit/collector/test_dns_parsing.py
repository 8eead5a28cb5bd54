"""DNS capture parsing: real dnslib messages inside hand-built IP/UDP/TCP, edge cases, fuzz."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from flowscope.collector.dns_parsing import (
    DnsExchanges,
    DnsPacket,
    DnsParseError,
    parse_message,
    parse_packet,
    qtype_name,
    rcode_name,
)
from flowscope.core.errors import CodecError
from flowscope.core.records import RawDns
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.collector import packet_building as pb

CLIENT4, SERVER4 = "10.204.0.2", "10.204.0.53"
CLIENT6, SERVER6 = "fd00:204::2", "fd00:204::53"
ANSWERS = [
    ("www.example.com", "CNAME", 300, "edge.example.net"),
    ("edge.example.net", "A", 60, "192.0.2.7"),
    ("edge.example.net", "AAAA", 60, "2001:db8::7"),
    ("edge.example.net", "MX", 60, "mail.example.net"),
]
KEPT = [
    {"name": "www.example.com", "type": "CNAME", "ttl": 300, "data": "edge.example.net"},
    {"name": "edge.example.net", "type": "A", "ttl": 60, "data": "192.0.2.7"},
    {"name": "edge.example.net", "type": "AAAA", "ttl": 60, "data": "2001:db8::7"},
]


def udp4(message: bytes, to_server: bool = True, options: bytes = b"") -> bytes:
    src, dst, sport, dport = (CLIENT4, SERVER4, 40000, 53)
    if not to_server:
        src, dst, sport, dport = dst, src, dport, sport
    return pb.ipv4(src, dst, 17, pb.udp(sport, dport, message), options)


def events_of(exchanges: DnsExchanges, data: bytes, ts: int) -> list[RawDns]:
    out: list[RawDns] = []
    exchanges.observe(data, ts, out)
    return out


def observe(exchanges: DnsExchanges, data: bytes, ts: int) -> RawDns | None:
    """The event a packet with one DNS message completes, if any."""
    events = events_of(exchanges, data, ts)
    assert len(events) <= 1
    return events[0] if events else None


def answers_of(packet: DnsPacket | None) -> list[dict]:
    assert packet is not None
    return [a.to_wire() for a in packet.message.answers]


# ---------------------------------------------------------------- well-formed packets


def test_ipv4_udp_query() -> None:
    packet = parse_packet(udp4(pb.query("www.Example.com", "AAAA", ident=7)))
    assert packet == DnsPacket(
        CLIENT4, 40000, SERVER4, 53, 17, parse_message(pb.query("www.example.com", "AAAA", 7))
    )
    assert packet.message.qname == "www.example.com"
    assert packet.message.qtype == "AAAA"
    assert packet.message.id == 7
    assert not packet.message.is_response


def test_ipv4_udp_response_keeps_a_aaaa_cname_and_skips_others() -> None:
    packet = parse_packet(udp4(pb.response("www.example.com", ANSWERS), to_server=False))
    assert packet is not None
    assert packet.message.is_response
    assert packet.message.rcode == "NOERROR"
    assert (packet.src, packet.sport, packet.dst, packet.dport) == (SERVER4, 53, CLIENT4, 40000)
    assert answers_of(packet) == KEPT
    assert not packet.message.truncated


def test_ipv4_with_options() -> None:
    options = b"\x94\x04\x00\x00" + b"\x01" * 8  # router alert + NOPs: IHL 8
    packet = parse_packet(udp4(pb.query("a.b"), options=options))
    assert packet is not None and packet.message.qname == "a.b"


@pytest.mark.parametrize("extensions", [[], [0], [0, 60], [43], [44], [0, 43, 44, 60], [51]])
def test_ipv6_with_extension_headers(extensions: list[int]) -> None:
    message = pb.response("svc.local", ANSWERS[1:3], qtype="AAAA")
    data = pb.ipv6(SERVER6, CLIENT6, 17, pb.udp(53, 5353, message), extensions)
    packet = parse_packet(data)
    assert packet is not None
    assert (packet.src, packet.dst, packet.sport, packet.dport) == (SERVER6, CLIENT6, 53, 5353)
    assert packet.message.qtype == "AAAA"
    assert answers_of(packet) == KEPT[1:3]


def test_ipv6_later_fragment_rejected() -> None:
    data = bytearray(pb.ipv6(CLIENT6, SERVER6, 17, pb.udp(1, 53, pb.query("x")), [44]))
    data[42:44] = struct.pack("!H", 8 << 3)  # fragment offset 8
    with pytest.raises(DnsParseError, match="fragment"):
        parse_packet(bytes(data))


def test_ipv4_later_fragment_rejected() -> None:
    data = bytearray(udp4(pb.query("x")))
    data[6:8] = struct.pack("!H", 0x2000 | 3)
    with pytest.raises(DnsParseError, match="fragment"):
        parse_packet(bytes(data))


@pytest.mark.parametrize("ip", ["v4", "v6"])
def test_tcp_with_length_prefix(ip: str) -> None:
    payload = pb.tcp(53, 41000, pb.tcp_dns(pb.response("t.example", ANSWERS)), b"\x02\x04\x05\xb4")
    if ip == "v4":
        data = pb.ipv4(SERVER4, CLIENT4, 6, payload)
    else:
        data = pb.ipv6(SERVER6, CLIENT6, 6, payload)
    packet = parse_packet(data)
    assert packet is not None and packet.proto == 6
    assert answers_of(packet) == KEPT


def test_tcp_without_payload_is_not_dns() -> None:
    assert parse_packet(pb.ipv4(CLIENT4, SERVER4, 6, pb.tcp(41000, 53, b""))) is None


def test_tcp_message_spanning_segments_keeps_what_is_there() -> None:
    message = pb.response("t.example", ANSWERS)
    first = pb.tcp_dns(message)[:60]
    packet = parse_packet(pb.ipv4(SERVER4, CLIENT4, 6, pb.tcp(53, 41000, first)))
    assert packet is not None and packet.message.truncated
    assert answers_of(packet) == KEPT[: len(answers_of(packet))]


BIG_ANSWERS = [("big.example", "A", 60, f"10.1.{i // 256}.{i % 256}") for i in range(300)]
BIG_ANSWERS += [("big.example", "TXT", 60, f"v=spf1 include:x{i:03d}.example") for i in range(60)]


def tcp4(src: str, dst: str, sport: int, dport: int, payload: bytes, seq: int) -> bytes:
    return pb.ipv4(src, dst, 6, pb.tcp(sport, dport, payload, seq=seq))


def response_segments(stream: bytes, mss: int, isn: int) -> list[bytes]:
    """The server's side of a TCP connection, cut into segments of ``mss`` bytes."""
    return [
        tcp4(SERVER4, CLIENT4, 53, 41000, stream[i : i + mss], (isn + 1 + i) % 2**32)
        for i in range(0, len(stream), mss)
    ]


@pytest.mark.parametrize("mss", [536, 1000, 1220, 1448, 8948])
def test_tcp_response_in_many_segments_is_one_event(mss: int) -> None:
    """Only the segment where the message starts is parsed; continuations (which could
    parse as bogus messages or fail mid-record) are skipped, not errors."""
    exchanges = DnsExchanges("n")
    query = pb.tcp_dns(pb.query("big.example", ident=77))
    assert observe(exchanges, tcp4(CLIENT4, SERVER4, 41000, 53, query, 1000), 10) is None
    message = pb.response("big.example", BIG_ANSWERS, ident=77)
    segments = response_segments(pb.tcp_dns(message), mss, isn=2**32 - 700)  # wraps
    events = [observe(exchanges, segment, 20 + i) for i, segment in enumerate(segments)]
    found = [e for e in events if e is not None]
    assert len(found) == 1 and found[0].id == 77 and found[0].latency_ns == 10
    assert found[0].qname == "big.example" and found[0].answers
    assert exchanges.counts.tcp_skipped == len(segments) - 1
    assert exchanges.pending() == 0 and exchanges.expire(10**12) == []


def test_tcp_stream_follows_length_prefixes_across_segments() -> None:
    """Responses on one connection starting at a segment's start, inside a continuation
    segment, and with their header split by a segment boundary; a retransmit."""
    first = pb.tcp_dns(pb.response("big.example", BIG_ANSWERS, ident=1))
    second = pb.tcp_dns(pb.response("t.example", ANSWERS, ident=2))
    stream = first + second + first
    cut = len(first) + len(second)

    def ids_of(bounds: list[tuple[int, int]]) -> tuple[list[int], int]:
        exchanges = DnsExchanges("n")
        events = [
            observe(exchanges, tcp4(SERVER4, CLIENT4, 53, 41000, stream[a:b], 5000 + a), 1)
            for a, b in bounds
        ]
        return [e.id for e in events if e is not None], exchanges.counts.tcp_skipped

    assert ids_of([(0, 1448), (1448, cut - 20), (cut - 20, len(stream))]) == ([1, 2, 1], 0)
    split_header = [(0, 1448), (1448, len(first) + 10), (len(first) + 10, cut)]
    retransmit = [(0, 1448), (cut, len(stream))]
    assert ids_of(split_header + retransmit) == ([1, 1], 3)


def test_tcp_new_connection_on_the_same_ports_starts_a_message() -> None:
    exchanges = DnsExchanges("n")
    message = pb.tcp_dns(pb.response("t.example", ANSWERS, ident=5))
    for isn in (100, 3_000_000_000):
        event = observe(exchanges, tcp4(SERVER4, CLIENT4, 53, 41000, message, isn), 1)
        assert event is not None and event.id == 5
    assert exchanges.counts.tcp_skipped == 0


def pipelined(messages: list[bytes]) -> bytes:
    return b"".join(pb.tcp_dns(message) for message in messages)


def test_tcp_pipelined_queries_and_responses_in_one_segment_are_each_paired() -> None:
    """RFC 7766 §6.2.1.1: a client may send several queries in one segment and the
    server answer them in one, in any order. Every message is paired, and the stream's
    next message start is still known."""
    exchanges = DnsExchanges("n")
    queries = pipelined([pb.query(f"q{i}.example", ident=i) for i in (1, 2, 3)])
    assert events_of(exchanges, tcp4(CLIENT4, SERVER4, 41000, 53, queries, 100), 10) == []
    assert exchanges.pending() == 3
    responses = pipelined([pb.response(f"q{i}.example", ANSWERS, ident=i) for i in (2, 3, 1)])
    events = events_of(exchanges, tcp4(SERVER4, CLIENT4, 53, 41000, responses, 7000), 25)
    assert [(e.id, e.qname, e.latency_ns, e.answers) for e in events] == [
        (i, f"q{i}.example", 15, KEPT) for i in (2, 3, 1)
    ]
    assert exchanges.pending() == 0 and exchanges.counts.answered == 3
    later = pb.tcp_dns(pb.response("q4.example", ANSWERS, ident=4))
    (event,) = events_of(
        exchanges, tcp4(SERVER4, CLIENT4, 53, 41000, later, 7000 + len(responses)), 30
    )
    assert event.id == 4 and exchanges.counts.tcp_skipped == 0


@pytest.mark.parametrize(("into_second", "ids"), [(200, [1, 2, 3]), (14, [1, 3])])
def test_tcp_later_message_cut_by_the_segment_end_keeps_what_it_holds(
    into_second: int, ids: list[int]
) -> None:
    """The last message of a segment continues in the next one: the answers it has in
    this segment are kept (nothing, when its question continues); the next segment is
    parsed from the message after it."""
    first = pb.tcp_dns(pb.response("a.example", ANSWERS, ident=1))
    second = pb.tcp_dns(pb.response("b.example", BIG_ANSWERS, ident=2))
    stream = first + second + pb.tcp_dns(pb.response("c.example", ANSWERS, ident=3))
    split = len(first) + into_second
    exchanges = DnsExchanges("n")
    events = events_of(exchanges, tcp4(SERVER4, CLIENT4, 53, 41000, stream[:split], 5000), 1)
    rest = tcp4(SERVER4, CLIENT4, 53, 41000, stream[split:], 5000 + split)
    events += events_of(exchanges, rest, 2)
    assert [e.id for e in events] == ids and exchanges.counts.tcp_skipped == 0
    if 2 in ids:
        kept = [a["data"] for a in events[1].answers]
        assert 0 < len(kept) < len(BIG_ANSWERS)
        assert kept == [data for *_, data in BIG_ANSWERS[: len(kept)]]


@pytest.mark.parametrize("ends_in", ["answers", "question", "prefix"])
def test_capture_ending_inside_a_later_message_is_not_an_error(ends_in: str) -> None:
    """The capture length promises the first message's header and question, not a later
    one's: a later message it cuts keeps the answers it holds, or is dropped."""
    first = pb.tcp_dns(pb.response("a.example", ANSWERS, ident=1))
    second = pb.tcp_dns(pb.response("b.example", ANSWERS, ident=2))
    captured = len(first) + {"answers": 90, "question": 16, "prefix": 1}[ends_in]
    whole = tcp4(SERVER4, CLIENT4, 53, 41000, first + second, 5000)
    events = events_of(DnsExchanges("n"), whole[: 40 + captured], 1)
    assert [e.id for e in events] == ([1, 2] if ends_in == "answers" else [1])
    if ends_in == "answers":
        assert 0 < len(events[1].answers) < len(KEPT)


def test_a_malformed_later_message_is_an_error_after_the_earlier_events() -> None:
    first = pb.tcp_dns(pb.response("a.example", ANSWERS, ident=1))
    bad = pb.tcp_dns(header(an=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c")
    out: list[RawDns] = []
    with pytest.raises(DnsParseError):
        DnsExchanges("n").observe(tcp4(SERVER4, CLIENT4, 53, 41000, first + bad, 5000), 1, out)
    assert [e.id for e in out] == [1]


def test_rcode_and_qtype_names() -> None:
    packet = parse_packet(udp4(pb.response("nope.example", [], rcode=3), to_server=False))
    assert packet is not None and packet.message.rcode == "NXDOMAIN"
    assert [rcode_name(i) for i in range(6)] == [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    ]  # fmt: skip
    assert rcode_name(15) == "RCODE15"
    assert [qtype_name(t) for t in (1, 28, 5, 12, 15, 16, 33, 65)] == [
        "A", "AAAA", "CNAME", "PTR", "MX", "TXT", "SRV", "HTTPS",
    ]  # fmt: skip
    assert qtype_name(4242) == "TYPE4242"


def header(qd: int = 1, an: int = 0, flags: int = 0x8180, ident: int = 1) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, 0, 0)


def test_name_escapes_and_root() -> None:
    msg = header() + b"\x03a.b\x02\x01Z\x00" + b"\x00\x01\x00\x01"
    assert parse_message(msg).qname == "a\\.b.\\001z"
    assert parse_message(header() + b"\x00\x00\x02\x00\x01").qname == "."


def test_ttl_with_top_bit_counts_as_zero() -> None:
    question = b"\x01a\x00\x00\x01\x00\x01"
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0x80000001, 4) + bytes([192, 0, 2, 1])
    (answer,) = parse_message(header(an=1) + question + rr).answers
    assert answer.ttl == 0 and answer.data == "192.0.2.1"


def test_qdcount_zero_response() -> None:
    msg = parse_message(header(qd=0, flags=0x8181))
    assert (msg.qname, msg.qtype, msg.rcode) == ("", "", "FORMERR")


# ---------------------------------------------------------------- hostile packets


def test_pointer_to_itself_rejected() -> None:
    with pytest.raises(DnsParseError, match="pointer"):
        parse_message(header() + b"\xc0\x0c\x00\x01\x00\x01")


def test_pointer_loop_between_two_names_rejected() -> None:
    # Question name at 12 points forward to 18, whose labels point back to 12.
    msg = header() + b"\xc0\x12\x00\x01\x00\x01" + b"\x01a\xc0\x0c"
    with pytest.raises(DnsParseError, match="pointer"):
        parse_message(msg)


def test_backward_pointer_chain_that_loops_rejected() -> None:
    # Answer name: label then pointer back to 12; at 12 a label then a pointer to 20.
    question = b"\x01q\xc0\x14\x00\x01\x00\x01"  # 12..19, pointer at 14 -> 20 (forward)
    rr = b"\x01r\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + b"\x01\x02\x03\x04"
    with pytest.raises(DnsParseError, match="pointer"):
        parse_message(header(an=1) + question + rr)


def test_pointer_out_of_range_rejected() -> None:
    question = b"\x01q\x00\x00\x01\x00\x01"
    rr = b"\xff\xff" + struct.pack("!HHIH", 1, 1, 1, 4) + b"\x01\x02\x03\x04"
    with pytest.raises(DnsParseError, match="pointer"):
        parse_message(header(an=1) + question + rr)


def test_pointer_cut_off_rejected() -> None:
    with pytest.raises(DnsParseError):
        parse_message(header() + b"\xc0")


def test_long_label_and_long_name_rejected() -> None:
    with pytest.raises(DnsParseError, match="label"):
        parse_message(header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01")
    long_name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"  # 257 wire bytes
    with pytest.raises(DnsParseError, match="long-name"):
        parse_message(header() + long_name + b"\x00\x01\x00\x01")
    ok_name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"a" * 61 + b"\x00"  # exactly 255
    assert len(parse_message(header() + ok_name + b"\x00\x01\x00\x01").qname) == 253


def test_huge_counts_with_few_bytes_rejected() -> None:
    with pytest.raises(DnsParseError):
        parse_message(header(qd=65535, an=65535) + b"\x00\x00\x01\x00\x01")


def test_bad_rdata_lengths_rejected() -> None:
    question = b"\x01q\x00\x00\x01\x00\x01"
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 3) + b"\x01\x02\x03"
    with pytest.raises(DnsParseError, match="rdata"):
        parse_message(header(an=1) + question + rr)
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 1, 4) + b"\x01x\x00\x00"
    with pytest.raises(DnsParseError, match="CNAME"):
        parse_message(header(an=1) + question + cname)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x45",
        b"\x00" * 40,
        b"\x45" + b"\x00" * 19,  # total length 0
        b"\x4f" + b"\x00\x00\xff" + b"\x00" * 16,  # IHL 60 > 20 bytes
        b"\x60" + b"\x00" * 20,
    ],
)
def test_broken_ip_rejected(data: bytes) -> None:
    with pytest.raises(DnsParseError):
        parse_packet(data)


def test_other_transport_rejected() -> None:
    with pytest.raises(DnsParseError, match="transport"):
        parse_packet(pb.ipv4(CLIENT4, SERVER4, 1, b"\x08\x00" + b"\x00" * 30))


def test_ipv6_extension_chain_bounded() -> None:
    data = pb.ipv6(CLIENT6, SERVER6, 17, pb.udp(1, 53, pb.query("x")), [60] * 12)
    with pytest.raises(DnsParseError, match="extension"):
        parse_packet(data)


def test_every_truncation_of_a_full_packet_is_an_error() -> None:
    """Cut inside the packet's own lengths (IP length adjusted): always DnsParseError."""
    message = pb.response("www.example.com", ANSWERS)
    for cut in range(len(message)):
        data = udp4(message[:cut], to_server=False)
        with pytest.raises(DnsParseError):
            parse_packet(data)


def test_every_capture_prefix_is_an_error_or_a_truncated_prefix_of_answers() -> None:
    """A capture cut short (IP says longer): header+question needed, answers kept so far."""
    data = udp4(pb.response("www.example.com", ANSWERS), to_server=False)
    for cut in range(len(data)):
        try:
            packet = parse_packet(data[:cut])
        except DnsParseError:
            continue
        assert packet is not None and packet.message.truncated
        assert packet.message.qname == "www.example.com"
        got = answers_of(packet)
        assert got == KEPT[: len(got)]


def test_512_byte_capture_of_a_large_response() -> None:
    many = [("big.example", "A", 30, f"198.51.100.{i}") for i in range(60)]
    data = udp4(pb.response("big.example", many), to_server=False)
    assert len(data) > 512
    packet = parse_packet(data[:512])
    assert packet is not None and packet.message.truncated
    got = answers_of(packet)
    assert 10 < len(got) < 60
    assert [a["data"] for a in got] == [f"198.51.100.{i}" for i in range(len(got))]


# ---------------------------------------------------------------- fuzz


def parse_or_reject(data: bytes) -> None:
    """The property: a valid result, or DnsParseError — nothing else escapes."""
    try:
        packet = parse_packet(data)
    except DnsParseError as error:
        assert isinstance(error, CodecError) and error.reason
        return
    if packet is None:
        return
    msg = packet.message
    assert isinstance(msg.qname, str) and isinstance(msg.qtype, str)
    assert 0 <= msg.id <= 0xFFFF
    for answer in msg.answers:
        assert answer.type in ("A", "AAAA", "CNAME") and 0 <= answer.ttl < 2**31
        # An answer must also serve as a wire record (the raw contract).
        RawDns.from_wire(
            {
                "observer": "n",
                "time_ns": 0,
                "id": msg.id,
                "qname": msg.qname,
                "qtype": msg.qtype,
                "rcode": msg.rcode,
                "client": packet.src,
                "client_port": packet.sport,
                "server": packet.dst,
                "server_port": packet.dport,
                "answers": [answer.to_wire()],
            }
        )


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    parse_or_reject(data)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["udp4", "udp6", "tcp4"]))
def test_fuzz_random_dns_in_valid_headers(message: bytes, shape: str) -> None:
    if shape == "udp4":
        data = udp4(message)
    elif shape == "udp6":
        data = pb.ipv6(CLIENT6, SERVER6, 17, pb.udp(5000, 53, message))
    else:
        data = pb.ipv4(CLIENT4, SERVER4, 6, pb.tcp(5000, 53, pb.tcp_dns(message)))
    parse_or_reject(data)


TCP_PIECES = [
    pb.tcp_dns(pb.response("c.d", ANSWERS, ident=1)),
    pb.tcp_dns(pb.query("c.d", ident=2)),
    pb.tcp_dns(pb.response("big.example", BIG_ANSWERS[:40], ident=3)),
]


@FUZZ
@given(
    st.lists(st.one_of(st.sampled_from(TCP_PIECES), st.binary(max_size=40)), max_size=6),
    st.lists(st.integers(0, 1500), max_size=4),
    st.integers(40, 1500),
)
def test_fuzz_tcp_streams_through_exchanges(pieces: list[bytes], cuts: list[int], cap: int) -> None:
    """A stream of messages and garbage, cut into segments anywhere and captured up to
    ``cap`` bytes: events that round-trip, or DnsParseError; nothing else."""
    stream = b"".join(pieces)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    exchanges = DnsExchanges("n")
    for a, b in itertools.pairwise(bounds):
        out: list[RawDns] = []
        with contextlib.suppress(DnsParseError):
            exchanges.observe(tcp4(SERVER4, CLIENT4, 53, 41000, stream[a:b], 9 + a)[:cap], 1, out)
        for record in out:
            assert RawDns.from_wire(record.to_wire()) == record


VALID = [
    udp4(pb.query("www.example.com")),
    udp4(pb.response("www.example.com", ANSWERS), to_server=False),
    pb.ipv6(SERVER6, CLIENT6, 17, pb.udp(53, 9, pb.response("a.b", ANSWERS)), [0, 44]),
    pb.ipv4(SERVER4, CLIENT4, 6, pb.tcp(53, 9, pb.tcp_dns(pb.response("c.d", ANSWERS)))),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "pointer"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "pointer" and len(data) > at + 1:
            data[at] = 0xC0 | draw(st.integers(0, 3))
            data[at + 1] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(mutated())
def test_fuzz_mutated_valid_packets(data: bytes) -> None:
    parse_or_reject(data)


# ---------------------------------------------------------------- pairing


def test_query_then_response_gives_latency() -> None:
    exchanges = DnsExchanges("node-1")
    assert observe(exchanges, udp4(pb.query("www.example.com", ident=9)), 1_000) is None
    event = observe(
        exchanges, udp4(pb.response("www.example.com", ANSWERS, ident=9), to_server=False), 4_500
    )
    assert event == RawDns(
        observer="node-1", time_ns=1_000, id=9, qname="www.example.com", qtype="A",
        rcode="NOERROR", client=CLIENT4, client_port=40000, server=SERVER4, server_port=53,
        proto=17, latency_ns=3_500, answers=KEPT,
    )  # fmt: skip
    assert exchanges.pending() == 0


def test_response_without_query() -> None:
    exchanges = DnsExchanges("n")
    event = observe(exchanges, udp4(pb.response("x.example", [], ident=3), to_server=False), 77)
    assert event is not None and event.latency_ns == 0 and event.time_ns == 77
    assert event.client == CLIENT4 and event.server == SERVER4
    assert exchanges.counts.unmatched == 1


def test_response_with_other_id_does_not_match() -> None:
    exchanges = DnsExchanges("n")
    observe(exchanges, udp4(pb.query("x.example", ident=1)), 10)
    event = observe(exchanges, udp4(pb.response("x.example", [], ident=2), to_server=False), 20)
    assert event is not None and event.latency_ns == 0
    assert exchanges.pending() == 1


def test_retransmitted_query_keeps_first_time() -> None:
    exchanges = DnsExchanges("n")
    observe(exchanges, udp4(pb.query("r.example", ident=5)), 100)
    observe(exchanges, udp4(pb.query("r.example", ident=5)), 300)
    event = observe(exchanges, udp4(pb.response("r.example", [], ident=5), to_server=False), 400)
    assert event is not None and event.latency_ns == 300
    assert exchanges.counts.retransmits == 1


def test_pending_table_is_bounded_oldest_evicted() -> None:
    exchanges = DnsExchanges("n", max_pending=3)
    for ident in range(5):
        observe(exchanges, udp4(pb.query("e.example", ident=ident)), ident)
    assert exchanges.pending() == 3
    assert exchanges.counts.evicted == 2
    oldest = observe(exchanges, udp4(pb.response("e.example", [], ident=0), to_server=False), 9)
    assert oldest is not None and oldest.latency_ns == 0
    kept = observe(exchanges, udp4(pb.response("e.example", [], ident=4), to_server=False), 9)
    assert kept is not None and kept.latency_ns == 5


def test_expire_emits_unanswered_queries() -> None:
    exchanges = DnsExchanges("n", timeout_ns=1_000)
    observe(exchanges, udp4(pb.query("slow.example", ident=1)), 0)
    observe(exchanges, udp4(pb.query("slow.example", ident=2)), 600)
    assert exchanges.expire(999) == []
    (event,) = exchanges.expire(1_000)
    assert (event.id, event.rcode, event.answers, event.latency_ns) == (1, "", [], 0)
    assert (event.client, event.server, event.time_ns) == (CLIENT4, SERVER4, 0)
    assert [e.id for e in exchanges.expire(10_000)] == [2]
    assert exchanges.counts.expired == 2 and exchanges.pending() == 0


BACKEND4 = "10.204.1.7"  # the DNS pod behind the Service address SERVER4


def test_response_from_the_dnat_backend_pairs_with_the_query() -> None:
    """kube-proxy DNATs the Service address after TC ingress: the query is seen going to
    the Service, the response coming from the DNS pod. One event, the client's view."""
    exchanges = DnsExchanges("n")
    observe(exchanges, udp4(pb.query("svc.example", ident=7)), 1_000)
    response = pb.ipv4(
        BACKEND4, CLIENT4, 17, pb.udp(5353, 40000, pb.response("svc.example", ANSWERS, ident=7))
    )
    event = observe(exchanges, response, 1_800)
    assert event is not None
    assert (event.client, event.client_port, event.server, event.server_port) == (
        CLIENT4,
        40000,
        SERVER4,
        53,
    )
    assert (event.time_ns, event.latency_ns, event.rcode, event.answers) == (
        1_000,
        800,
        "NOERROR",
        KEPT,
    )
    assert exchanges.pending() == 0 and exchanges.expire(10**12) == []
    assert (exchanges.counts.translated, exchanges.counts.unmatched) == (1, 0)


def test_translated_pairing_needs_the_same_client_port_id_and_transport() -> None:
    exchanges = DnsExchanges("n")
    observe(exchanges, udp4(pb.query("svc.example", ident=7)), 1_000)
    for sport, dport, ident, proto in [(53, 40001, 7, 17), (53, 40000, 8, 17)]:
        message = pb.response("svc.example", [], ident=ident)
        event = observe(
            exchanges, pb.ipv4(BACKEND4, CLIENT4, proto, pb.udp(sport, dport, message)), 2_000
        )
        assert event is not None and event.latency_ns == 0 and event.server == BACKEND4
    assert exchanges.counts.unmatched == 2 and exchanges.pending() == 1


def test_exact_server_wins_over_an_older_translated_candidate() -> None:
    exchanges = DnsExchanges("n")
    observe(exchanges, udp4(pb.query("a.example", ident=4)), 100)  # to SERVER4
    other = pb.ipv4(CLIENT4, BACKEND4, 17, pb.udp(40000, 53, pb.query("a.example", ident=4)))
    observe(exchanges, other, 200)  # the same question to a second server
    answer = pb.ipv4(
        BACKEND4, CLIENT4, 17, pb.udp(53, 40000, pb.response("a.example", [], ident=4))
    )
    event = observe(exchanges, answer, 500)
    assert event is not None and (event.server, event.latency_ns) == (BACKEND4, 300)
    assert exchanges.counts.translated == 0
    (left,) = exchanges.expire(10**12)
    assert left.server == SERVER4


def test_observe_raises_parse_error_for_bad_packet() -> None:
    with pytest.raises(DnsParseError):
        observe(DnsExchanges("n"), b"\x45garbage", 0)


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[bytes, int, bool | None]]:
    """Queries, responses (some matching) and garbage with rising timestamps.

    Each item: (bytes, timestamp, is_response or None for garbage).
    """
    items = []
    now = 0
    for _ in range(draw(st.integers(1, 40))):
        now += draw(st.integers(1, 2_000_000_000))  # rising: a matched latency is > 0
        kind = draw(st.sampled_from(["query", "response", "garbage"]))
        ident = draw(st.integers(0, 3))
        port = draw(st.sampled_from([40000, 40001]))
        if kind == "query":
            data = pb.ipv4(
                CLIENT4, SERVER4, 17, pb.udp(port, 53, pb.query("p.example", ident=ident))
            )
        elif kind == "response":
            message = pb.response("p.example", ANSWERS[1:2], ident=ident)
            server = draw(st.sampled_from([SERVER4, BACKEND4]))  # BACKEND4: behind a DNAT
            data = pb.ipv4(server, CLIENT4, 17, pb.udp(53, port, message))
        else:
            data = draw(st.binary(max_size=40))
        items.append((data, now, None if kind == "garbage" else kind == "response"))
    return items


@FUZZ
@given(traffic(), st.integers(1, 4))
def test_pairing_properties(items: list[tuple[bytes, int, bool | None]], max_pending: int) -> None:
    exchanges = DnsExchanges("n", max_pending=max_pending, timeout_ns=3_000_000_000)
    responses = matched = 0
    emitted: list[RawDns] = []
    for data, ts, is_response in items:
        try:
            event = observe(exchanges, data, ts)
        except DnsParseError:
            assert is_response is None
            continue
        emitted += exchanges.expire(ts)
        assert exchanges.pending() <= max_pending
        if is_response:
            responses += 1
            assert event is not None
            matched += event.latency_ns > 0
        else:
            assert event is None
        if event is not None:
            emitted.append(event)
    assert responses == matched + exchanges.counts.unmatched
    questions = sum(is_response is False for _, _, is_response in items)
    asked = questions - exchanges.counts.retransmits  # each remembered query leaves once:
    left = exchanges.pending() + exchanges.counts.evicted + exchanges.counts.expired
    assert asked == matched + left  # answered, still pending, evicted or expired
    for record in emitted:
        assert RawDns.from_wire(record.to_wire()) == record
        assert record.latency_ns >= 0
        # a paired answer reports the server the client asked; only an unpaired one
        # from the DNS pod names the pod
        expected = {SERVER4} if record.latency_ns > 0 or not record.rcode else {SERVER4, BACKEND4}
        assert record.server in expected and record.server_port == 53
        assert record.client == CLIENT4


def test_bytearray_and_memoryview_inputs() -> None:
    """Ring-buffer readers may hand over a bytearray or memoryview: same result."""
    message = pb.response("www.example.com", ANSWERS)
    expected = parse_message(message)
    assert parse_message(bytearray(message)) == expected
    assert parse_message(memoryview(message)) == expected  # type: ignore[arg-type]
    packet = udp4(message, to_server=False)
    assert parse_packet(bytearray(packet)) == parse_packet(memoryview(packet))  # type: ignore[arg-type]
