"""Value types: wire round trips and one typed error for contract violations."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from flowscope.core import records
from flowscope.core.errors import RecordError
from flowscope.core.records import (
    DNS_REQUIRED,
    FLOW_OPTIONAL,
    FLOW_REQUIRED,
    DnsRecord,
    Endpoint,
    FlowRecord,
    RawDns,
    RawFlow,
    RawSocket,
    _validate,
    validate_dns,
    validate_flow,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def flow_record() -> FlowRecord:
    return FlowRecord(
        community_id="1:abc",
        start_ns=1,
        end_ns=2,
        end_reason="active_timeout",
        direction="forward",
        network_type="ipv4",
        transport="tcp",
        source=Endpoint(
            "10.0.0.1", 4000, "pod", {"k8s.pod.name": "a", "k8s.pod.labels.app": "web"}
        ),
        destination=Endpoint("10.0.0.2", 80, "service", {"k8s.service.name": "svc"}),
        bytes=10,
        packets=1,
        reverse_bytes=20,
        reverse_packets=2,
        observer_node="n1",
        tcp_flags=["SYN", "ACK"],
    )


def test_flow_record_wire_keys_are_the_contract() -> None:
    wire = flow_record().to_wire()
    assert set(records.FLOW_REQUIRED) <= set(wire)
    assert all(records.is_contract_key(k) for k in wire)
    assert wire["source.k8s.pod.labels.app"] == "web"
    assert FlowRecord.from_wire(wire) == flow_record()


def test_flow_record_missing_or_mistyped_keys() -> None:
    wire = flow_record().to_wire()
    del wire["flow.bytes.delta"]
    with pytest.raises(RecordError, match=r"flow\.bytes\.delta"):
        FlowRecord.from_wire(wire)
    wire = flow_record().to_wire() | {"source.process.pid": "12"}
    with pytest.raises(RecordError, match=r"source\.process\.pid"):
        FlowRecord.from_wire(wire)
    wire = flow_record().to_wire() | {"source.port": True}
    with pytest.raises(RecordError):
        FlowRecord.from_wire(wire)


def test_dns_record_round_trip() -> None:
    rec = DnsRecord(
        time_ns=5,
        id=7,
        question_name="example.org",
        question_type="A",
        response_code="NOERROR",
        answers=[{"name": "example.org", "type": "A", "ttl": 30, "data": "192.0.2.1"}],
        latency_ns=1000,
        client=Endpoint("10.0.0.1", 5353, "pod"),
        server=Endpoint("10.0.0.10", 53, "service"),
        observer_node="n1",
    )
    assert DnsRecord.from_wire(rec.to_wire()) == rec


def test_raw_types_round_trip() -> None:
    sock = RawSocket("n", 1, "connect", 6, "10.0.0.1", 1, "10.0.0.2", 2, 100, 101, "curl")
    assert RawSocket.from_wire(sock.to_wire()) == sock
    dns = RawDns(
        "n", 1, 2, "a.example", "A", "NOERROR", "10.0.0.1", 999, "10.0.0.2", 53,
        answers=[{"name": "a.example", "type": "A", "ttl": 1, "data": "10.1.1.1"}],
    )  # fmt: skip
    assert RawDns.from_wire(dns.to_wire()) == dns


def test_raw_dns_bad_answer_is_a_record_error() -> None:
    wire = RawDns("n", 1, 2, "a", "A", "NOERROR", "1.1.1.1", 1, "2.2.2.2", 53).to_wire()
    wire["answers"] = [{"name": "a"}]
    with pytest.raises(RecordError, match="missing key"):
        RawDns.from_wire(wire)


@given(st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=5), max_size=20))
def test_arbitrary_dicts_give_record_error_only(data: dict[str, Any]) -> None:
    for cls in (RawFlow, RawSocket, RawDns):
        with contextlib.suppress(RecordError):
            cls.from_wire(data)
    with contextlib.suppress(RecordError):
        FlowRecord.from_wire(data)


@given(st.one_of(st.none(), st.integers(), st.lists(st.integers()), st.text()))
def test_non_objects_give_record_error(data: object) -> None:
    with pytest.raises(RecordError):
        RawFlow.from_wire(data)
    with pytest.raises(RecordError):
        FlowRecord.from_wire(data)


def test_helpers() -> None:
    assert records.transport_name(58) == "ipv6-icmp"
    assert records.transport_name(250) == "250"


@pytest.mark.parametrize(
    ("number", "keyword"),
    [(0, "hopopt"), (4, "ipv4"), (41, "ipv6"), (89, "ospfigp"), (103, "pim"), (112, "vrrp"),
     (115, "l2tp"), (136, "udplite"), (143, "ethernet"), (61, "61"), (114, "114"),
     (253, "253"), (255, "255")],
)  # fmt: skip
def test_every_iana_keyword_names_its_transport(number: int, keyword: str) -> None:
    """Before: only 9 protocols were named; IP-in-IP (Calico's encapsulation) and VRRP
    (keepalived) came out as "4" and "112" though IANA names them."""
    assert records.transport_name(number) == keyword
    assert records.tcp_flag_tags(0x12) == ["SYN", "ACK"]
    assert records.tcp_flag_tags(0xFF) == list(records.TCP_FLAG_NAMES)


# Values of every JSON type, so contract keys get right and wrong types (None included).
_any_value = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | (st.lists(st.text(max_size=3), max_size=2))
)
_keys = st.sampled_from(
    sorted({*FLOW_REQUIRED, *FLOW_OPTIONAL, *DNS_REQUIRED, "source.k8s.pod.labels.app", "x"})
)


def _outcome(check: Any, data: Any) -> tuple[str, Any]:
    try:
        return ("ok", check(data) is data)
    except RecordError as e:
        return ("error", str(e))


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(["flow", "dns"]),
    drop=st.lists(_keys, max_size=2),
    changes=st.dictionaries(_keys, _any_value, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_shape_checked_validation_is_the_plain_validation(
    base: str, drop: list[str], changes: dict[str, Any], order: Any
) -> None:
    """validate_flow / validate_dns (per-shape check in C) accept and reject exactly
    what the key-by-key check does, with the same error, cold and warm."""
    required = FLOW_REQUIRED if base == "flow" else DNS_REQUIRED
    data = {k: {int: 7, str: "a", list: []}[t] for k, t in required.items()}
    for key in drop:
        data.pop(key, None)
    data.update(changes)
    items = list(data.items())
    order.shuffle(items)
    data = dict(items)
    for schema, fast, table in (
        ("flow", validate_flow, FLOW_REQUIRED),
        ("dns", validate_dns, DNS_REQUIRED),
    ):
        expected = _outcome(lambda d, s=schema, t=table: _validate(s, d, 0, t), data)
        assert _outcome(fast, data) == expected
        assert _outcome(fast, data) == expected  # shape now known
