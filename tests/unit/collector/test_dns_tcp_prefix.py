"""DNS over TCP whose 2-byte length prefix travels in its own segment.

A sender that writes the prefix and the message with two send() calls on a TCP_NODELAY
socket puts them in two segments. Before, the prefix segment was skipped and the
message segment too (the stream expected the message after it): the exchange vanished,
with no event, not even an unanswered one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from flowscope.collector.dns_parsing import DnsExchanges
from flowscope.core.records import RawDns

from tests.unit.collector import packet_building as pb

CLIENT, SERVER = "10.204.0.2", "10.204.0.53"
ANSWERS = [("t.example", "A", 60, "192.0.2.7")]
Segment = Callable[[bytes, int], bytes]


def to_server(payload: bytes, seq: int) -> bytes:
    return pb.ipv4(CLIENT, SERVER, 6, pb.tcp(41000, 53, payload, seq=seq))


def to_client(payload: bytes, seq: int) -> bytes:
    return pb.ipv4(SERVER, CLIENT, 6, pb.tcp(53, 41000, payload, seq=seq))


def run(exchanges: DnsExchanges, packets: list[bytes]) -> list[RawDns]:
    out: list[RawDns] = []
    for ts, packet in enumerate(packets, start=1):
        exchanges.observe(packet, ts * 10, out)
    return out


def split(stream: bytes, cuts: list[int], seq: int, build: Segment) -> list[bytes]:
    """``stream`` sent as segments ending at ``cuts``, the first at sequence ``seq``."""
    bounds = [0, *cuts, len(stream)]
    return [build(stream[a:b], (seq + a) % 2**32) for a, b in itertools.pairwise(bounds)]


def test_prefix_and_message_in_separate_segments_pair_with_answers() -> None:
    query, response = pb.query("t.example", ident=9), pb.response("t.example", ANSWERS, ident=9)
    exchanges = DnsExchanges("n")
    packets = split(pb.tcp_dns(query), [2], 1000, to_server)
    packets += split(pb.tcp_dns(response), [2], 2**32 - 1, to_client)  # wraps
    (event,) = run(exchanges, packets)
    assert (event.id, event.qname, event.latency_ns) == (9, "t.example", 20)
    assert [a["data"] for a in event.answers] == ["192.0.2.7"]
    assert exchanges.counts.answered == 1 and exchanges.counts.tcp_skipped == 0


def test_prefix_ending_a_segment_of_pipelined_messages_is_read_with_the_next() -> None:
    """Message 1 and message 2's prefix in one segment, message 2 and 3 in the next."""
    messages = [pb.response(f"q{i}.example", ANSWERS, ident=i) for i in (1, 2, 3)]
    stream = b"".join(pb.tcp_dns(m) for m in messages)
    cut = len(pb.tcp_dns(messages[0])) + 2
    events = run(DnsExchanges("n"), split(stream, [cut], 7000, to_client))
    assert [e.id for e in events] == [1, 2, 3]


def test_segments_after_a_carried_prefix_still_follow_the_stream() -> None:
    """After a message read with its carried prefix, the next message is found as
    before, and a retransmit of the message segment is skipped, not read again."""
    first, second = (pb.tcp_dns(pb.response("t.example", ANSWERS, ident=i)) for i in (1, 2))
    packets = split(first + second, [2, len(first)], 500, to_client)
    exchanges = DnsExchanges("n")
    events = run(exchanges, [*packets[:2], packets[1], packets[2]])
    assert [e.id for e in events] == [1, 2] and exchanges.counts.tcp_skipped == 1
