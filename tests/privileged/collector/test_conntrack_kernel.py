"""ctnetlink lookups against the real kernel's conntrack, in a namespace node with a
kube-proxy-like DNAT rule (tests/privileged/collector/nat_node.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.privileged.collector.nat_node import (
    TCP_PORT,
    TCP_TARGET,
    UDP_PORT,
    UDP_TARGET,
    VIP4,
    VIP6,
    NatNode,
)
from tests.privileged.collector.node import finish, wait_listening


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_dnat_entry_gives_the_backend_as_reply_source(nat_node: NatNode, v6: bool) -> None:
    from flowscope.collector.conntrack import IPS_DST_NAT, Conntrack, CtTuple

    client, backend = nat_node.pods
    vip, caddr, baddr = (VIP6, client.ip6, backend.ip6) if v6 else (VIP4, client.ip4, backend.ip4)
    srv = nat_node.start(backend, "tcp-server", baddr, str(TCP_TARGET), "100")
    wait_listening(srv)
    sport = int(finish(nat_node.start(client, "tcp-client", vip, str(TCP_PORT), "1000"))["sport"])
    finish(srv)
    udp = nat_node.start(backend, "udp-echo", baddr, str(UDP_TARGET), "1")
    wait_listening(udp)
    usport = int(nat_node.run(client, "udp-client", vip, str(UDP_PORT), "1", "20")["sport"])
    finish(udp)
    with nat_node.inside():
        ct = Conntrack()
        try:
            tcp, udp_answer, missing = ct.lookup_many([
                CtTuple(6, packed(caddr), packed(vip), sport, TCP_PORT),
                CtTuple(17, packed(caddr), packed(vip), usport, UDP_PORT),
                CtTuple(17, packed(caddr), packed(vip), usport, UDP_PORT + 1),
            ])  # fmt: skip
        finally:
            ct.close()
    # The entry outlives the connection (TIME_WAIT), as it does for a drain after FIN.
    assert tcp.errno == 0 and tcp.status & IPS_DST_NAT
    assert tcp.reply == CtTuple(6, packed(baddr), packed(caddr), TCP_TARGET, sport)
    assert tcp.orig == CtTuple(6, packed(caddr), packed(vip), sport, TCP_PORT)
    assert udp_answer.reply == CtTuple(17, packed(baddr), packed(caddr), UDP_TARGET, usport)
    assert missing.reply is None and missing.errno == 2  # ENOENT


def test_lookup_without_cap_net_admin_is_unavailable_not_a_crash(nat_node: NatNode) -> None:
    """The kernel refuses ctnetlink without CAP_NET_ADMIN: one typed error."""
    code = (
        "from flowscope.collector.conntrack import Conntrack, CtTuple, ConntrackUnavailable\n"
        "try:\n"
        "    Conntrack().lookup(CtTuple(6, bytes(4), bytes(4), 1, 2))\n"
        "except ConntrackUnavailable as e:\n"
        "    print('unavailable', e.errno)\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", nat_node.host, "setpriv", "--inh-caps=-all",
         "--bounding-set=-net_admin", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["unavailable", "1"]  # EPERM


def test_many_lookups_answered_in_order_across_batches(nat_node: NatNode) -> None:
    """More requests than one datagram carries (BATCH): every answer lands on its tuple."""
    from flowscope.collector.conntrack import BATCH, Conntrack, CtTuple

    client, backend = nat_node.pods
    echo = nat_node.start(backend, "udp-echo", backend.ip4, str(UDP_TARGET), "1")
    wait_listening(echo)
    usport = int(nat_node.run(client, "udp-client", VIP4, str(UDP_PORT), "1", "20")["sport"])
    finish(echo)
    real = CtTuple(17, packed(client.ip4), packed(VIP4), usport, UDP_PORT)
    absent = [CtTuple(17, packed(client.ip4), packed(VIP4), 1 + i, 9) for i in range(2 * BATCH + 5)]
    asked = [*absent[:BATCH], real, *absent[BATCH:]]
    with nat_node.inside():
        ct = Conntrack()
        try:
            answers = ct.lookup_many(asked)
        finally:
            ct.close()
    assert [a.reply is not None for a in answers] == [t == real for t in asked]
    assert answers[BATCH].reply == CtTuple(
        17, packed(backend.ip4), packed(client.ip4), UDP_TARGET, usport
    )
