"""``dns.capture_bytes`` takes any value of its range (256-4096), not only multiples of 8.

Before: 100, 513 or 1500 stopped start-up with "start-up check abi failed: struct
dns_event layout ... differs" — bcc names the tail padding of ``struct dns_event``
(``__pad_end``) that ctypes leaves unnamed.
"""

from __future__ import annotations

import ctypes

import pytest
from flowscope.collector import abi
from flowscope.collector.loading import FlowProgramConfig, load_flow_program


@pytest.mark.parametrize("capture", [257, 513])
def test_a_capture_length_that_is_no_multiple_of_8_loads(capture: int) -> None:
    program = load_flow_program(
        FlowProgramConfig(max_flows=1024, cache_slots=0, dns_capture_len=capture)
    )
    try:
        derived = program.bpf[b"dns_event_layout"].Leaf
        assert [name for name, *_ in derived._fields_][-1] == "__pad_end"
        assert ctypes.sizeof(derived) == ctypes.sizeof(abi.dns_event_type(capture))
    finally:
        program.close()
