"""Golden bytes pin the flow ABI (bpf/flowscope_abi.h ↔ services/collector/abi.py)."""

from __future__ import annotations

import ctypes

import pytest
from flowscope.collector import abi
from flowscope.core.errors import StartupError

# Hand-written little-endian bytes of each struct with known values: if either the C
# header or the ctypes mirror changes layout, this file must change with them.
FLOW_KEY_GOLDEN = bytes.fromhex(
    "0acb000a000000000000000000000000"  # addr_lo 10.203.0.10
    "0acb000b000000000000000000000000"  # addr_hi 10.203.0.11
    "d204"  # port_lo 1234
    "901f"  # port_hi 8080
    "06"  # proto tcp
    "04"  # family inet
    "0000"  # pad
)
FLOW_VALUE_GOLDEN = bytes.fromhex(
    "0100000000000000"  # first_tick 1
    "0200000000000000"  # last_tick 2
    "0300000000000000" "0400000000000000"  # packets [3, 4]
    "0500000000000000" "0600000000000000"  # bytes [5, 6]
    "1300000000000000"  # tcp_flags FIN|SYN|ACK
    "07000000"  # ifindex 7
    "01"  # fwd hi→lo
    "01"  # initiator
    "0000"  # pad
)  # fmt: skip
COUNTERS_GOLDEN = bytes.fromhex(
    "0100000000000000" "0200000000000000" "0300000000000000" "0400000000000000"
)  # fmt: skip


def test_flow_key_golden_bytes() -> None:
    key = abi.FlowKey()
    key.addr_lo[:4] = [10, 203, 0, 10]
    key.addr_hi[:4] = [10, 203, 0, 11]
    key.port_lo, key.port_hi, key.proto, key.family = 1234, 8080, 6, abi.AF_INET
    assert ctypes.sizeof(abi.FlowKey) == 40
    assert bytes(key) == FLOW_KEY_GOLDEN


def test_flow_value_golden_bytes() -> None:
    value = abi.FlowValue(first_tick=1, last_tick=2, tcp_flags=0x13, ifindex=7, fwd=1, initiator=1)
    value.packets[:] = [3, 4]
    value.bytes[:] = [5, 6]
    assert ctypes.sizeof(abi.FlowValue) == 64
    assert bytes(value) == FLOW_VALUE_GOLDEN
    assert abi.FlowValue.from_buffer_copy(FLOW_VALUE_GOLDEN).bytes[1] == 6


def test_clock_pair_golden_bytes() -> None:
    assert ctypes.sizeof(abi.ClockPair) == 16
    assert bytes(abi.ClockPair(jiffies=0x0102, coarse_ns=0x0304)) == bytes.fromhex(
        "0201000000000000" "0403000000000000"
    )  # fmt: skip


def test_counters_golden_bytes() -> None:
    assert bytes(abi.CollectorCounters(1, 2, 3, 4)) == COUNTERS_GOLDEN


def test_dns_event_header_then_data() -> None:
    event_type = abi.dns_event_type(64)
    event = event_type(ts_ns=0x0102030405060708, ifindex=9, pkt_len=70, cap_len=64, direction=1)
    event.data[:3] = [0x45, 0, 0]
    raw = bytes(event)
    assert ctypes.sizeof(event_type) == abi.DNS_EVENT_HEADER + 64
    assert raw[:24] == bytes.fromhex("0807060504030201" "09000000" "46000000" "4000" "01" "0000000000")  # fmt: skip
    assert raw[24:27] == b"\x45\x00\x00"


def test_layout_mismatch_is_a_startup_error() -> None:
    class Other(ctypes.Structure):
        _fields_ = [("first_tick", ctypes.c_uint32)]

    abi.check_layout("struct flow_value", abi.FlowValue, abi.FlowValue)
    with pytest.raises(StartupError, match="struct flow_value layout"):
        abi.check_layout("struct flow_value", abi.FlowValue, Other)
