"""Messages encoded by the enricher (atomic batches, one ack each): the exact HPUB
bytes, and what it leaves to nats-py (tests/integration/enricher/test_publishing.py
compares both on the wire)."""

from __future__ import annotations

import pytest
from flowscope.enricher.publishing import BATCH_COMMIT, Message, encode

HEADERS = {"Flowscope-Schema": "flow/1", "Flowscope-Count": "2"}


def test_a_batch_is_hpub_commands_with_the_batch_headers() -> None:
    messages: list[Message] = [
        ("flowscope.flows.a.b", b'{"n":1}\n{"n":2}\n', {**HEADERS, "Nats-Msg-Id": "m:1"}),
        ("flowscope.flows.ü.c", b"", {}),
    ]
    head1 = (
        b"NATS/1.0\r\nFlowscope-Schema: flow/1\r\nFlowscope-Count: 2\r\nNats-Msg-Id: m:1\r\n"
        b"Nats-Batch-Id: b1\r\nNats-Batch-Sequence: 1\r\n\r\n"
    )
    head2 = (
        b"NATS/1.0\r\nNats-Batch-Id: b1\r\nNats-Batch-Sequence: 2\r\nNats-Batch-Commit: 1\r\n\r\n"
    )
    assert encode(messages, ["", "_INBOX.x.7"], "b1", 1 << 20) == (
        b"HPUB flowscope.flows.a.b  %d %d\r\n" % (len(head1), len(head1) + 16) + head1
        + b'{"n":1}\n{"n":2}\n\r\n'
        + "HPUB flowscope.flows.ü.c _INBOX.x.7 %d %d\r\n".encode() % (len(head2), len(head2))
        + head2 + b"\r\n"
    )  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        ("a b", b"x", {}),  # nats-py refuses white space in a subject
        ("a\r\nPUB x 1", b"x", {}),
        ("", b"x", {}),
        ("a", b"x" * 101, {}),  # over the server's max payload: nats-py raises
        ("a", b"x", {"Bad Key": "v"}),  # not a token: nats-py raises
        ("a", b"x", {"K": "v\r\nInjected: 1"}),  # nats-py replaces line breaks
        ("a", b"x", {"K": " v"}),  # nats-py strips surrounding white space
        ("a", b"x", {"K": "v\t"}),
        ("a", b"x", {"K": "v\u00a0"}),
        ("a", b"x", {BATCH_COMMIT: "1"}),  # publish's dict merge would keep its place
    ],
)
def test_what_publish_would_change_or_refuse_is_left_to_it(message: Message) -> None:
    ok: Message = ("a", b"x", {"K": "v"})
    assert encode([ok], ["r"], "b", 100) is not None
    assert encode([ok, message], ["", "r"], "b", 100) is None
    if message[2] != {BATCH_COMMIT: "1"}:  # one ack each: no batch headers of ours
        assert encode([ok, message], ["r1", "r2"], None, 100) is None


def test_messages_with_one_ack_each_have_their_own_reply_and_no_batch_headers() -> None:
    messages: list[Message] = [("s.a", b"1\n", {"Nats-Msg-Id": "a"}), ("s.b", b"", {})]
    head1, head2 = b"NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n", b"NATS/1.0\r\n\r\n"
    assert encode(messages, ["r.1", "r.2"], None, 100) == (
        b"HPUB s.a r.1 %d %d\r\n%s1\n\r\n" % (len(head1), len(head1) + 2, head1)
        + b"HPUB s.b r.2 %d %d\r\n%s\r\n" % (len(head2), len(head2), head2)
    )
