"""NAT pairing remembers the addresses conntrack NAT'ed (dialled Service addresses,
masqueraded clients) whole: an IPv6 address's first 8 bytes are its /64, which its
neighbours share, and their lone one-way flows are not NAT'ed and not looked up."""

from __future__ import annotations

from flowscope.collector.conntrack import CtTuple

from tests.unit.collector.test_nat_pairing import (
    TCP,
    UDP,
    Conntrack,
    Reader,
    by_ends,
    dnat,
    drained,
    drainer,
    entry,
    packed,
    snat,
)

POD, NEIGHBOUR, PEER = "fd00:10:244:1::5", "fd00:10:244:1::6", "fd00:10:244:3::9"
OUTSIDE, NODE = "2001:db8::9", "fd00:ff::1"
SERVICE, OTHER_IN_ITS_64, BACKEND = "fd00:10:96::a", "fd00:10:96::77", "fd00:10:244:2::7"


def test_lone_flows_from_a_masqueraded_clients_ipv6_neighbours_are_not_asked() -> None:
    ct = Conntrack({**snat((POD, 40000), (OUTSIDE, 443), (NODE, 40000), TCP),
                    **snat((POD, 5000), (OUTSIDE, 53), (NODE, 5000), UDP)})  # fmt: skip
    x = entry(POD, 40000, OUTSIDE, 443, syn=True)
    y = entry(OUTSIDE, 443, NODE, 40000)
    neighbours = [entry(NEIGHBOUR, 6000 + i, PEER, 9000, UDP) for i in range(5)]
    own = entry(POD, 5000, OUTSIDE, 53, UDP)
    d = drainer(Reader([[x, y]], [[*neighbours, own]]), ct)
    drained(d)
    flows = by_ends(drained(d))
    # The masqueraded client itself is still asked alone, and rewritten.
    assert flows[(POD, 5000, OUTSIDE, 53)]["nat_src"] == NODE
    assert ct.asked[1:] == [CtTuple(UDP, packed(POD), packed(OUTSIDE), 5000, 53)]
    assert all("nat_src" not in flows[(NEIGHBOUR, 6000 + i, PEER, 9000)] for i in range(5))


def test_lone_flows_to_other_addresses_in_a_dialled_ipv6_addresss_64_are_not_asked() -> None:
    ct = Conntrack({**dnat((POD, 40000), (SERVICE, 80), (BACKEND, 8080)),
                    **dnat((POD, 5000), (SERVICE, 53), (BACKEND, 5353), UDP)})  # fmt: skip
    x = entry(POD, 40000, SERVICE, 80, syn=True)
    y = entry(BACKEND, 8080, POD, 40000)
    elsewhere = [entry(POD, 6000 + i, OTHER_IN_ITS_64, 9000, UDP) for i in range(5)]
    own = entry(POD, 5000, SERVICE, 53, UDP)
    d = drainer(Reader([[x, y]], [[*elsewhere, own]]), ct)
    drained(d)
    flows = by_ends(drained(d))
    assert flows[(POD, 5000, BACKEND, 5353)]["nat_dst"] == SERVICE
    assert ct.asked[1:] == [CtTuple(UDP, packed(POD), packed(SERVICE), 5000, 53)]
    assert all((POD, 6000 + i, OTHER_IN_ITS_64, 9000) in flows for i in range(5))
