"""ctnetlink encoding and decoding, against bytes written out from the kernel's UAPI
(linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h) by hand."""

from __future__ import annotations

import struct

import pytest
from flowscope.collector.conntrack import (
    Answer,
    ConntrackError,
    CtTuple,
    decode_messages,
    encode_get,
)
from hypothesis import given, settings
from hypothesis import strategies as st

A, VIP, B = bytes([10, 0, 0, 1]), bytes([10, 96, 0, 10]), bytes([10, 0, 1, 7])


def attr(kind: int, payload: bytes, nested: bool = False) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind | (0x8000 if nested else 0)) + payload + bytes(-size % 4)


def tuple_attrs(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    v4 = len(src) == 4
    ip = attr(1 if v4 else 3, src) + attr(2 if v4 else 4, dst)  # CTA_IP_V4_SRC/DST, V6: 3/4
    pr = (
        attr(1, bytes([proto]))
        + attr(2, struct.pack("!H", sport))
        + attr(3, struct.pack("!H", dport))
    )
    return attr(1, ip, nested=True) + attr(2, pr, nested=True)  # CTA_TUPLE_IP, CTA_TUPLE_PROTO


def message(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def entry_message(seq: int, orig: bytes, reply: bytes, status: int = 0x1AE) -> bytes:
    """An IPCTNL_MSG_CT_NEW answer (type 1 << 8 | 0) as the kernel writes it."""
    body = struct.pack("=BBH", 2, 0, 0)  # nfgenmsg: AF_INET, NFNETLINK_V0
    body += attr(1, orig, nested=True) + attr(2, reply, nested=True)  # CTA_TUPLE_ORIG/REPLY
    body += attr(3, struct.pack("!I", status))  # CTA_STATUS, big endian
    body += attr(7, struct.pack("!I", 120))  # CTA_TIMEOUT: ignored
    return message(0x0100, seq, body)


def test_get_request_is_the_uapi_message() -> None:
    got = encode_get(CtTuple(6, A, VIP, 40000, 80), seq=7)
    body = struct.pack("=BBH", 2, 0, 0) + attr(1, tuple_attrs(A, VIP, 6, 40000, 80), nested=True)
    # IPCTNL_MSG_CT_GET = NFNL_SUBSYS_CTNETLINK (1) << 8 | 1; NLM_F_REQUEST = 1
    assert got == message(0x0101, 7, body, flags=1)
    # nlmsghdr 16, nfgenmsg 4, CTA_TUPLE_ORIG 4 + (IP 4 + 8 + 8) + (PROTO 4 + 8 + 8 + 8)
    assert got[:4] == struct.pack("=I", 16 + 4 + 4 + 20 + 28)


def test_ipv6_request_uses_v6_attributes_and_family() -> None:
    a6, b6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
    got = encode_get(CtTuple(17, a6, b6, 5353, 53), seq=1)
    body = struct.pack("=BBH", 10, 0, 0) + attr(1, tuple_attrs(a6, b6, 17, 5353, 53), nested=True)
    assert got == message(0x0101, 1, body, flags=1)


def test_answers_are_decoded_in_order() -> None:
    data = entry_message(
        5, tuple_attrs(A, VIP, 6, 40000, 80), tuple_attrs(B, A, 6, 8080, 40000), status=0x1BE
    )
    data += message(2, 6, struct.pack("=i", -2) + bytes(16))  # NLMSG_ERROR: -ENOENT
    assert list(decode_messages(data)) == [
        Answer(5, CtTuple(6, B, A, 8080, 40000), CtTuple(6, A, VIP, 40000, 80), 0x1BE),
        Answer(6, errno=2),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x02",  # shorter than a header
        struct.pack("=IHHII", 200, 0x0100, 0, 1, 0) + bytes(8),  # length past the data
        struct.pack("=IHHII", 8, 0x0100, 0, 1, 0),  # length below the header
        message(0x0100, 1, b"\x02\x00"),  # no full nfgenmsg
        message(0x0100, 1, struct.pack("=BBH", 2, 0, 0)),  # no reply tuple
        message(0x0100, 1, struct.pack("=BBH", 2, 0, 0) + struct.pack("=HH", 40, 2)),  # attr past end
        message(0x0100, 1, struct.pack("=BBH", 2, 0, 0) + attr(2, attr(2, attr(1, b"\x06"), True), True)),
        message(0x0100, 1, struct.pack("=BBH", 2, 0, 0) + attr(2, attr(1, attr(1, A) + attr(4, bytes(16)), True), True)),
        message(2, 1, b"\x00"),  # error without its code
        message(0x0302, 1, b""),  # another subsystem's message
    ],
    ids=["short", "overlong", "underlong", "nfgenmsg", "no-reply", "attr-past-end", "no-address",
         "mixed-families", "error-code", "foreign"],
)  # fmt: skip
def test_malformed_answers_raise_conntrack_error(data: bytes) -> None:
    with pytest.raises(ConntrackError):
        list(decode_messages(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_conntrack_error_only(data: bytes) -> None:
    try:
        answers = list(decode_messages(data))
    except ConntrackError:
        return
    assert all(isinstance(a, Answer) and (a.reply is None) == (a.orig is None) for a in answers)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16), st.integers(0, 2**31 - 1))
def test_any_truncation_of_a_good_answer_is_rejected(cut: bytes, seq: int) -> None:
    good = entry_message(seq, tuple_attrs(A, VIP, 17, 1, 2), tuple_attrs(B, A, 17, 3, 1))
    n = len(cut) % len(good)
    with pytest.raises(ConntrackError):
        list(decode_messages(good[:n] if n else good[:1]))
