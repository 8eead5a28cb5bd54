"""`flows.nat_pairing=false`: a connection through a DNAT'ed Service stays the two one-way
flows the TC programs counted, and conntrack is never asked."""

from __future__ import annotations

import contextlib
import os

from flowscope.core import codec, subjects

from tests.privileged.collector.collector_process import CollectorProcess
from tests.privileged.collector.nat_node import UDP_PORT, UDP_TARGET, VIP4, NatNode
from tests.privileged.collector.node import finish, wait_listening
from tests.privileged.collector.test_nat_pairing_kernel import subscribed
from tests.support import nats_server


async def test_pairing_off_publishes_both_one_way_halves() -> None:
    with NatNode(tag=f"natoff{os.getpid()}").built() as node:
        with node.inside():
            server = nats_server.start()
        try:
            with node.inside():
                collector = CollectorProcess(
                    server.url, node.host, extra=["--flows-nat-pairing", "false"]
                ).start()
            try:
                async with contextlib.asynccontextmanager(subscribed)(
                    node, server.url, codec.RAW_FLOW, subjects.raw_flows("testnode")
                ) as flows:
                    client, backend = node.pods
                    echo = node.start(backend, "udp-echo", backend.ip4, str(UDP_TARGET), "3")
                    wait_listening(echo)
                    sport = int(
                        node.run(client, "udp-client", VIP4, str(UDP_PORT), "3", "100")["sport"]
                    )
                    finish(echo)
                    got = await flows.wait_for(
                        lambda r: r["proto"] == 17 and sport in (r["sport"], r["dport"])
                    )
                    halves = {(r["src"], r["sport"], r["dst"], r["dport"]) for r in got}
                    assert halves == {
                        (client.ip4, sport, VIP4, UDP_PORT),  # the request, before DNAT
                        (backend.ip4, UDP_TARGET, client.ip4, sport),  # the reply, before un-NAT
                    }, got
                    assert all("nat_dst" not in r for r in got)
                assert collector.metric("flowscope_collector_nat_lookups_total") == 0
            finally:
                collector.close()
        finally:
            server.close()
