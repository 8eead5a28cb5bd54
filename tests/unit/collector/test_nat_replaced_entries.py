"""A conntrack entry replaced while its answer is cached: the drain that sees the new
backend's replies asks again instead of joining the requests to the gone backend."""

from __future__ import annotations

from tests.unit.collector.test_nat_pairing import (
    UDP,
    VIP,
    A,
    B,
    Conntrack,
    Reader,
    by_ends,
    dnat,
    drained,
    drainer,
    entry,
)

B2 = "10.0.3.4"


def test_replies_from_a_new_backend_within_the_ttl_are_joined_to_it() -> None:
    """kube-proxy deletes a UDP Service's entries when its backend goes; the client's
    next datagram from the same socket gets a new entry and another backend."""
    x = entry(A, 5353, VIP, 53, UDP)
    ct = Conntrack(dnat((A, 5353), (VIP, 53), (B, 53), UDP))
    d = drainer(Reader([[x, entry(B, 53, A, 5353, UDP)]], [[x, entry(B2, 53, A, 5353, UDP)]]), ct)
    assert list(by_ends(drained(d))) == [(A, 5353, B, 53)]
    ct.entries = dnat((A, 5353), (VIP, 53), (B2, 53), UDP)
    (joined,) = drained(d)
    assert (joined["dst"], joined["dport"], joined["nat_dst"]) == (B2, 53, VIP)
    assert (joined["packets"], joined["rpackets"]) == (5, 5)
    assert d.pairing is not None and d.pairing.take_tally().pairs == 2


def test_replies_from_the_answered_backend_are_not_asked_again() -> None:
    """Another peer's replies to the same socket (no NAT) beside the backend's do not
    contradict the cached answer: no second lookup."""
    x = entry(A, 5353, VIP, 53, UDP)
    y = entry(B, 53, A, 5353, UDP)
    other = entry(B2, 53, A, 5353, UDP)
    ct = Conntrack(dnat((A, 5353), (VIP, 53), (B, 53), UDP))
    d = drainer(Reader([[x, y]], [[x, y, other]]), ct)
    drained(d)
    flows = by_ends(drained(d))
    assert (A, 5353, B, 53) in flows and (B2, 53, A, 5353) in flows
    assert len(ct.asked) == 1
