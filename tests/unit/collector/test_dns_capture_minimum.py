"""``dns.capture_bytes`` holds at least the headers and a typical question.

It accepted 64: the IPv4, UDP and DNS headers alone take 40 bytes, IPv6 and TCP more, so
the question of nearly every query was cut off and the packet counted as a parse error.
"""

from __future__ import annotations

import pytest
from flowscope.collector.dns_parsing import DnsExchanges
from flowscope.collector.settings import Settings
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.core.records import RawDns

from tests.unit.collector import packet_building as pb

NAME = "my-service.my-namespace.svc.cluster.local"
TIMESTAMPS = b"\x01\x01\x08\x0a" + bytes(8)  # the options of most TCP segments


def capture_bytes(value: int) -> int:
    env = {"FLOWSCOPE_DNS_CAPTURE_BYTES": str(value)}
    return config.load(Settings, {}, env).dns.capture_bytes


@pytest.mark.parametrize("value", [64, 100, 255])
def test_a_capture_too_short_for_a_question_stops_start_up(value: int) -> None:
    with pytest.raises(ConfigError) as raised:
        capture_bytes(value)
    assert "FLOWSCOPE_DNS_CAPTURE_BYTES" in str(raised.value)


@pytest.mark.parametrize(
    "packet",
    [
        pb.ipv4("10.0.0.1", "10.0.0.2", 17, pb.udp(40000, 53, pb.query(NAME))),
        pb.ipv6("fd00::1", "fd00::2", 17, pb.udp(40000, 53, pb.query(NAME))),
        pb.ipv6(
            "fd00::1", "fd00::2", 6,
            pb.tcp(40000, 53, pb.tcp_dns(pb.query(NAME)), TIMESTAMPS),
        ),
    ],
    ids=["ipv4-udp", "ipv6-udp", "ipv6-tcp"],
)  # fmt: skip
def test_the_smallest_capture_holds_a_typical_query(packet: bytes) -> None:
    smallest = next(v for v in range(1, 4097) if _accepted(v))
    exchanges = DnsExchanges("n")
    exchanges.observe(packet[:smallest], 1, [])  # raises DnsParseError when cut off
    out: list[RawDns] = exchanges.expire_all()
    assert [r.qname for r in out] == [NAME]


def _accepted(value: int) -> bool:
    try:
        capture_bytes(value)
    except ConfigError:
        return False
    return True
