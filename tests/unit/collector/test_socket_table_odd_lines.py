"""/proc/net socket table lines with signed numbers are malformed lines: counted and
skipped (SnapshotParseError), never raised out of the snapshot nor read as negative
addresses, ports or inodes."""

from __future__ import annotations

from flowscope.collector.socket_snapshotting import TCP, parse_table
from flowscope.collector.socket_tracing import AF_INET, AF_INET6

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
GOOD = "   0: 0100007F:0050 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1"
V6 = ("   1: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D431 01 "
      "00000000:00000000 00:00000000 00000000     0        0 12346 1")  # fmt: skip


def test_signed_numbers_are_malformed_lines() -> None:
    bad = [
        GOOD.replace("0100007F:0050", "-100007F:0050"),  # negative address word
        GOOD.replace("0100007F:D431", "0100007F:-431"),  # negative port
        GOOD.replace("0100007F:0050", "+100007F:0050"),  # signed address word
        GOOD.replace(" 12345 ", " -12345 "),  # negative inode
    ]
    found, errors = parse_table("\n".join([HEADER, *bad, GOOD, ""]), "tcp", AF_INET, TCP)
    assert [(e.local, e.lport, e.rport, e.inode) for e in found] == [
        ("127.0.0.1", 80, 54321, 12345)
    ]
    assert [e.number for e in errors] == [2, 3, 4, 5]


def test_a_negative_ipv6_word_is_a_malformed_line() -> None:
    bad = V6.replace(
        "00000000000000000000000001000000:0050", "000000000000000000000000-1000000:0050"
    )
    found, errors = parse_table(f"{HEADER}\n{bad}\n{V6}\n", "tcp6", AF_INET6, TCP)
    assert [(e.local, e.inode) for e in found] == [("::1", 12346)]
    assert [e.number for e in errors] == [2]
