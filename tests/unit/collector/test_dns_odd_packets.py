"""DNS packets that are odd but not malformed: IP fragments, TC responses, responses
without a question, EDNS extended response codes (review of session 27)."""

from __future__ import annotations

import struct

import pytest
from flowscope.collector.dns_parsing import DnsExchanges, DnsParseError, parse_message, parse_packet
from flowscope.core.records import RawDns

from tests.unit.collector import packet_building as pb

CLIENT4, SERVER4 = "10.204.0.2", "10.204.0.53"
CLIENT6, SERVER6 = "fd00:204::2", "fd00:204::53"
MANY = [("big.example", "A", 60, f"192.0.2.{i}") for i in range(1, 60)]
QUESTION = b"\x01a\x00\x00\x01\x00\x01"
A_RECORD = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])


def header(flags: int = 0x8180, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 1, flags, qd, an, ns, ar)


def opt(extended_rcode: int, udp_size: int = 1232) -> bytes:
    """An EDNS OPT pseudo-record (RFC 6891): its TTL's top byte extends the rcode."""
    return b"\x00" + struct.pack("!HHIH", 41, udp_size, extended_rcode << 24, 0)


def first_fragment(ip: str, size: int) -> bytes:
    """The first ``size`` bytes of a large UDP response's datagram, as the IP layer
    fragmented it: the UDP length names the whole datagram."""
    datagram = pb.udp(53, 40000, pb.response("big.example", MANY))[:size]
    if ip == "v6":
        return pb.ipv6(SERVER6, CLIENT6, 17, datagram, [44])  # offset 0, more fragments
    data = bytearray(pb.ipv4(SERVER4, CLIENT4, 17, datagram))
    data[6:8] = struct.pack("!H", 0x2000)  # more fragments, offset 0
    return bytes(data)


@pytest.mark.parametrize("ip", ["v4", "v6"])
def test_first_fragment_of_a_large_response_keeps_the_answers_it_holds(ip: str) -> None:
    """A capture that holds the whole first fragment (``dns.capture_bytes`` above the
    fragment's size) is a response cut short, not a malformed one."""
    packet = parse_packet(first_fragment(ip, 600))
    assert packet is not None and packet.message.truncated
    got = [a.data for a in packet.message.answers]
    assert 10 < len(got) < len(MANY)
    assert got == [f"192.0.2.{i}" for i in range(1, len(got) + 1)]


def test_unfragmented_udp_longer_than_its_ip_packet_is_still_an_error() -> None:
    data = bytearray(pb.ipv4(SERVER4, CLIENT4, 17, pb.udp(53, 40000, pb.query("x"))))
    data[24:26] = struct.pack("!H", 200)  # UDP length beyond the IP packet, no fragment
    with pytest.raises(DnsParseError, match="udp-length"):
        parse_packet(bytes(data))


def test_tc_response_with_fewer_records_than_counted_keeps_those_present() -> None:
    """TC set: the server says the message was cut to fit; its counts may exceed it."""
    message = parse_message(header(flags=0x8380, an=5) + QUESTION + A_RECORD)
    assert message.truncated
    assert [a.data for a in message.answers] == ["192.0.2.1"]


def test_without_tc_fewer_records_than_counted_is_an_error() -> None:
    with pytest.raises(DnsParseError):
        parse_message(header(an=5) + QUESTION + A_RECORD)


def test_response_without_question_is_reported_with_the_query_question() -> None:
    """FORMERR/REFUSED responses may omit the question section: the exchange's question
    is the one the client asked."""
    exchanges = DnsExchanges("node")
    ask = pb.ipv4(CLIENT4, SERVER4, 17, pb.udp(40000, 53, pb.query("asked.example", "AAAA", 1)))
    events: list[RawDns] = []
    exchanges.observe(ask, 10, events)
    assert events == []
    refused = pb.ipv4(SERVER4, CLIENT4, 17, pb.udp(53, 40000, header(0x8185, qd=0)))
    exchanges.observe(refused, 25, events)
    (event,) = events
    reported = (event.qname, event.qtype, event.rcode, event.latency_ns)
    assert reported == ("asked.example", "AAAA", "REFUSED", 15)


@pytest.mark.parametrize(("high", "low", "name"), [(1, 0, "BADVERS"), (1, 7, "BADCOOKIE")])
def test_edns_extended_rcode(high: int, low: int, name: str) -> None:
    message = parse_message(header(0x8180 | low, an=1, ar=1) + QUESTION + A_RECORD + opt(high))
    assert message.rcode == name


def test_edns_opt_after_authority_records_and_plain_rcode_kept() -> None:
    soa_like = b"\xc0\x0c" + struct.pack("!HHIH", 2, 1, 60, 2) + b"\xc0\x0c"  # NS
    message = parse_message(header(0x8183, ns=1, ar=1) + QUESTION + soa_like + opt(0))
    assert message.rcode == "NXDOMAIN"


def test_cut_capture_before_the_opt_record_keeps_the_header_rcode() -> None:
    message = parse_message(header(0x8183, an=1, ar=1) + QUESTION + A_RECORD, cut=True)
    assert message.rcode == "NXDOMAIN"


def test_a_malformed_additional_section_keeps_the_answers_and_the_header_rcode() -> None:
    """The sections after the answers are read only for the OPT record."""
    broken = b"\xc0\xff"  # a pointer past the end of the message
    message = parse_message(header(0x8180, an=1, ar=1) + QUESTION + A_RECORD + broken)
    assert message.rcode == "NOERROR" and len(message.answers) == 1
