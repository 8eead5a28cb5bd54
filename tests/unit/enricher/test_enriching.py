"""Raw flows → enriched records: orientation, joins, dedup rule, bad records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flowscope.core import records
from flowscope.core.community_id import community_id
from flowscope.enricher import objects
from flowscope.enricher.enriching import Enricher, Observers, merge_owner
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock

A, B = "10.1.0.5", "10.2.0.7"  # pod a on node-1, pod b on node-2


def enricher(clock: Clock | None = None, **options: Any) -> Enricher:
    """An enricher knowing pods a, b and a hostNetwork agent; ``options``: Enricher's."""
    clock = clock or Clock()
    inv = Inventory(60, clock=clock)
    for raw in (
        cluster.pod("a", ips=(A,), node="node-1", container_ids={"ca": "main"}),
        cluster.pod("b", namespace="data", ips=(B,), node="node-2", container_ids={"cb": "main"}),
        cluster.pod("agent", namespace="kube-system", ips=("192.168.0.1",), node="node-1",
                    host_network=True, container_ids={"cagent": "agent"}, containers=("agent",)),
    ):  # fmt: skip
        inv.upsert("pods", objects.pod_from_json(raw, ()))
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-1", "192.168.0.1")))
    inv.upsert("nodes", objects.node_from_json(cluster.node("node-2", "192.168.0.2")))
    return Enricher(
        inv, SocketTable(1000, 30, clock), NameCache(60, 3600, 1000, clock), Observers(300, clock),
        clock, **options,
    )  # fmt: skip


def flow(observer: str, src: str, dst: str, sport: int, dport: int, **kw: Any) -> dict:
    rec = {"observer": observer, "start_ns": 1, "end_ns": 2, "end_reason": "active_timeout",
           "proto": 6, "src": src, "dst": dst, "sport": sport, "dport": dport, "bytes": 100,
           "packets": 2, "rbytes": 900, "rpackets": 3, "tcp_flags": 0x18}  # fmt: skip
    rec.update(kw)
    return rec


def sock(observer: str, event: str, src: str, sport: int, dst: str, dport: int, pid: int,
         cid: str = "") -> dict:  # fmt: skip
    return {"observer": observer, "time_ns": 1, "event": event, "proto": 6, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "pid": pid, "tid": pid,
            "comm": f"p{pid}", "container_id": cid}  # fmt: skip


def answered(observer: str, client: str, qname: str, address: str) -> dict:
    """A raw DNS exchange: ``client`` asked ``qname`` (A) and got ``address``."""
    return {"observer": observer, "time_ns": 1, "id": 1, "qname": qname, "qtype": "A",
            "rcode": "NOERROR", "client": client, "client_port": 3333, "server": "10.96.0.10",
            "server_port": 53, "answers": [{"name": qname, "type": "A", "ttl": 30,
                                            "data": address}]}  # fmt: skip


def only(e: Enricher, raw: list[dict]) -> dict[str, Any]:
    out = e.flows(raw)
    assert not out.bad
    (recs,) = out.by_subject.values()
    (rec,) = recs
    return records.validate_flow(rec)


def test_collector_orientation_kept_when_nothing_known() -> None:
    rec = only(enricher(), [flow("node-1", A, B, 40000, 80)])
    assert rec["flow.direction"] == "unknown"
    assert (rec["source.address"], rec["flow.bytes.delta"]) == (A, 100)
    assert "source.process.pid" not in rec


def test_initiator_flag_means_forward() -> None:
    rec = only(enricher(), [flow("node-1", A, B, 40000, 80, initiator=True)])
    assert rec["flow.direction"] == "forward" and rec["source.address"] == A


def test_accept_on_the_first_end_swaps_ends_and_counters() -> None:
    e = enricher()
    e.learn_sockets([sock("node-1", "accept", A, 80, B, 40000, 11, "ca")])
    rec = only(e, [flow("node-1", A, B, 80, 40000)])
    assert rec["flow.direction"] == "forward"
    assert (rec["source.address"], rec["source.port"]) == (B, 40000)
    assert (rec["destination.address"], rec["destination.port"]) == (A, 80)
    assert (rec["flow.bytes.delta"], rec["flow.packets.delta"]) == (900, 3)
    assert (rec["flow.reverse.bytes.delta"], rec["flow.reverse.packets.delta"]) == (100, 2)
    assert rec["destination.process.pid"] == 11 and rec["destination.container.id"] == "ca"
    assert rec["destination.k8s.pod.name"] == "a"
    # hashed from the swapped ends' network-order bytes (the address cache keeps them)
    assert rec["flow.community_id"] == community_id(6, B, A, 40000, 80)


def test_host_network_pod_refined_by_container_id() -> None:
    e = enricher()
    e.learn_sockets([sock("node-1", "connect", "192.168.0.1", 5000, B, 80, 12, "cagent")])
    rec = only(e, [flow("node-1", "192.168.0.1", B, 5000, 80)])
    assert rec["source.kind"] == "pod"
    assert rec["source.address"] == "192.168.0.1"
    assert rec["source.k8s.pod.name"] == "agent"
    assert rec["source.k8s.container.name"] == "agent"
    assert rec["source.k8s.namespace.name"] == "kube-system"
    plain = only(enricher(), [flow("node-1", "192.168.0.1", B, 5001, 80)])
    assert plain["source.kind"] == "node" and plain["source.k8s.node.name"] == "node-1"


def test_dns_name_joined_per_client_and_subject_tokens() -> None:
    e = enricher()
    e.learn_dns([answered("node-1", A, "api.example.com", "203.0.113.5")])
    out = e.flows([flow("node-1", A, "203.0.113.5", 40000, 443, initiator=True)])
    assert list(out.by_subject) == ["flowscope.flows.shop._external"]
    assert (
        out.by_subject["flowscope.flows.shop._external"][0]["destination.domain"]
        == "api.example.com"
    )


def test_icmp_ports_reported_as_zero_ipv6_canonical() -> None:
    rec = only(enricher(), [flow("node-1", "2001:DB8:0:0::1", "2001:db8::2", 128, 0, proto=58)])
    assert rec["source.address"] == "2001:db8::1"
    assert (rec["source.port"], rec["destination.port"]) == (0, 0)
    assert rec["network.type"] == "ipv6" and rec["network.transport"] == "ipv6-icmp"
    assert "flow.tcp.flags.tags" not in rec


@pytest.mark.parametrize(
    "change",
    [{"bytes": "1"}, {"src": "not-an-ip"}, {"end_reason": "bored"}, {"observer": None},
     {"initiator": 1}, {"proto": 6.0}, {"proto": 300}, {"sport": 70000}, {"dport": -1},
     {"bytes": -5}, {"tcp_flags": 256}],
)  # fmt: skip
def test_bad_records_returned_not_raised(change: dict) -> None:
    e = enricher()
    bad = {**flow("node-1", A, B, 1, 2), **change}
    out = e.flows([bad, flow("node-1", A, B, 3, 4), "junk"])
    assert len(out.bad) == 2 and out.tally.records_out == 1


def test_merge_owner_is_direction_free() -> None:
    a, b = (A, 40000), (B, 80)
    assert merge_owner(a, b, "node-1", "node-2") == merge_owner(b, a, "node-2", "node-1")


def test_cross_node_report_from_the_non_owner_is_dropped_and_owner_has_both_processes() -> None:
    e = enricher()
    e.learn_sockets([sock("node-1", "connect", A, 40000, B, 80, 11, "ca"),
                     sock("node-2", "accept", B, 80, A, 40000, 22, "cb")])  # fmt: skip
    owner = merge_owner((A, 40000), (B, 80), "node-1", "node-2")
    other = "node-2" if owner == "node-1" else "node-1"
    reports = {"node-1": flow("node-1", A, B, 40000, 80), "node-2": flow("node-2", B, A, 80, 40000,
               bytes=900, packets=3, rbytes=100, rpackets=2)}  # fmt: skip
    dropped = e.flows([reports[other]])
    assert dropped.tally.dedup_dropped == 1 and not dropped.by_subject
    rec = only(e, [reports[owner]])
    assert rec["observer.node.name"] == owner
    assert (rec["source.process.pid"], rec["destination.process.pid"]) == (11, 22)
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (100, 900)


def test_report_kept_while_the_other_node_has_no_collector() -> None:
    e = enricher()
    owner = merge_owner((A, 40000), (B, 80), "node-1", "node-2")
    other = "node-2" if owner == "node-1" else "node-1"
    src, dst = (A, B) if other == "node-1" else (B, A)
    sport, dport = (40000, 80) if other == "node-1" else (80, 40000)
    out = e.flows([flow(other, src, dst, sport, dport)])
    assert out.tally.records_out == 1  # the owner node never reported anything


def test_dns_record_enriches_client_and_server() -> None:
    e = enricher()
    e.learn_sockets([{**sock("node-1", "udp", A, 3333, "10.2.0.7", 53, 11, "ca"), "proto": 17}])
    out = e.dns([{"observer": "node-1", "time_ns": 5, "id": 9, "qname": "db.data.svc",
                  "qtype": "A", "rcode": "NOERROR", "client": A, "client_port": 3333,
                  "server": B, "server_port": 53, "latency_ns": 1000,
                  "answers": [{"name": "db.data.svc", "type": "A", "ttl": 5, "data": B}]}])  # fmt: skip
    (subject,) = out.by_subject
    assert subject == "flowscope.dns.shop"
    rec = records.validate_dns(out.by_subject[subject][0])
    assert rec["source.k8s.pod.name"] == "a" and rec["destination.k8s.pod.name"] == "b"
    assert rec["source.process.pid"] == 11 and rec["dns.latency_ns"] == 1000


def dns_exchange(observer: str, client: str, server: str) -> dict[str, Any]:
    return {"observer": observer, "time_ns": 5, "id": 9, "qname": "db.data.svc", "qtype": "A",
            "rcode": "NOERROR", "client": client, "client_port": 3333, "server": server,
            "server_port": 53, "latency_ns": 1000,
            "answers": [{"name": "db.data.svc", "type": "A", "ttl": 5, "data": B}]}  # fmt: skip


def test_dns_exchange_seen_by_two_nodes_is_kept_on_the_clients_node() -> None:
    """Pod a (node-1) asks pod b (node-2): both collectors see the exchange; node-1,
    the client's node, always sees all of it, so node-2's report is the duplicate."""
    e = enricher()
    e.learn_sockets([sock("node-1", "connect", A, 1, B, 2, 1)])  # node-1 runs a collector
    dropped = e.dns([dns_exchange("node-2", A, B)])
    assert dropped.tally.dedup_dropped == 1 and not dropped.by_subject
    kept = e.dns([dns_exchange("node-1", A, "10.96.0.10")])  # the Service address it asked
    assert kept.tally.records_out == 1 and kept.tally.dedup_dropped == 0
    (rec,) = kept.by_subject["flowscope.dns.shop"]
    assert rec["observer.node.name"] == "node-1" and rec["destination.address"] == "10.96.0.10"


def test_dns_exchange_kept_while_the_clients_node_has_no_collector() -> None:
    e = enricher()
    out = e.dns([dns_exchange("node-2", A, B)])  # node-1 never sent anything
    assert out.tally.records_out == 1 and out.tally.dedup_dropped == 0
    outside = e.dns([dns_exchange("node-2", "198.51.100.7", B)])  # no home: kept
    assert outside.tally.records_out == 1


@pytest.mark.parametrize(
    "record",
    [
        {"observer": "n", "time_ns": 1, "id": 1, "qname": "a", "qtype": "A", "rcode": "NOERROR",
         "client": "10.0.0.1", "client_port": 1, "server": "10.0.0.2", "server_port": 53,
         "answers": [{"name": "a", "type": "A", "ttl": 1, "data": "192.0.2.1"}], "latency_ns": 5},
        {"observer": "n", "time_ns": 1, "id": 1, "qname": "a", "qtype": "A", "rcode": "NOERROR",
         "client": "10.0.0.1", "client_port": 1, "server": "10.0.0.2", "server_port": 53},
        {"observer": "n", "time_ns": 1, "id": 1, "qname": "a", "qtype": "A", "rcode": "NOERROR",
         "client": "10.0.0.1", "client_port": 1, "server": "10.0.0.2", "server_port": 53,
         "answers": [{"name": "a", "type": "A", "ttl": "1", "data": "192.0.2.1"}]},
        {"observer": "n", "time_ns": 1, "id": "1", "qname": "a"},
        ["not", "a", "record"],
    ],
)  # fmt: skip
def test_fast_dns_check_agrees_with_the_contract(record: Any) -> None:
    from flowscope.core.errors import RecordError
    from flowscope.core.records import RawDns
    from flowscope.enricher.enriching import check_dns

    try:
        expected = RawDns.from_wire(record)
    except RecordError:
        with pytest.raises(RecordError):
            check_dns(record, 0)
        return
    assert check_dns(record, 0) == expected


def test_socket_without_known_owner_orients_but_names_no_process() -> None:
    e = enricher()
    e.learn_sockets([{**sock("node-1", "accept", A, 80, B, 40000, 0), "comm": ""}])
    rec = only(e, [flow("node-1", A, B, 80, 40000)])
    assert rec["flow.direction"] == "forward" and rec["source.address"] == B
    assert "destination.process.pid" not in rec and "destination.process.executable.name" not in rec


def test_aaaa_answers_match_flows_by_canonical_address() -> None:
    e = enricher()
    e.learn_dns([{"observer": "node-1", "time_ns": 1, "id": 1, "qname": "v6.example",
                  "qtype": "AAAA", "rcode": "NOERROR", "client": "fd00::5", "client_port": 3333,
                  "server": B, "server_port": 53,
                  "answers": [{"name": "v6.example", "type": "AAAA", "ttl": 30,
                               "data": "2001:DB8:0::7"},
                              {"name": "v6.example", "type": "A", "ttl": 30, "data": "junk"}]}])  # fmt: skip
    rec = only(e, [flow("node-1", "fd00::5", "2001:db8::7", 40000, 443, initiator=True)])
    assert rec["destination.domain"] == "v6.example"
    mixed = e.flows([flow("node-1", A, "2001:db8::7", 40000, 443)])
    assert len(mixed.bad) == 1 and "address families" in str(mixed.bad[0][1])


def test_dnat_fields_name_the_dialled_service_and_its_domain() -> None:
    """A flow the collector found DNAT'ed: the record stays client → backend pod (so its
    Community ID is the backend node's), the Service is the one whose address the client
    dialled, the domain the name the client resolved to that address."""
    import orjson
    from flowscope.core.community_id import community_id

    vip = "10.96.0.20"
    e = enricher()
    inv = e.resolver
    assert isinstance(inv, Inventory)
    inv.upsert("services", objects.service_from_json(cluster.service("db", "data", (vip,))))
    inv.upsert(
        "services", objects.service_from_json(cluster.service("aaa", "data", ("10.96.0.21",)))
    )
    for name in ("db", "aaa"):  # both select pod b; without NAT the first name is reported
        slice_ = cluster.endpointslice(f"{name}-x", name, (B,), namespace="data")
        inv.upsert("endpointslices", objects.endpointslice_from_json(slice_))
    e.learn_dns([answered("node-1", A, "db.data.svc.cluster.local", vip)])
    e.learn_sockets([sock("node-1", "connect", A, 40000, vip, 80, 11, "ca")])
    raw = flow("node-1", A, B, 40000, 8080, initiator=True, nat_dst=vip, nat_dport=80)
    rec = only(e, [raw])
    assert (rec["destination.address"], rec["destination.port"]) == (B, 8080)
    assert rec["destination.kind"] == "pod" and rec["destination.k8s.pod.name"] == "b"
    assert rec["destination.k8s.service.name"] == "db"
    assert rec["destination.domain"] == "db.data.svc.cluster.local"
    assert rec["source.process.pid"] == 11  # its socket is connected to the Service
    assert rec["flow.community_id"] == community_id(6, A, B, 40000, 8080)
    assert e.flow_lines([raw]).lines == {
        s: [orjson.dumps(r) + b"\n" for r in rs] for s, rs in e.flows([raw]).by_subject.items()
    }
    plain = only(e, [flow("node-1", A, B, 40001, 8080, initiator=True)])
    assert plain["destination.k8s.service.name"] == "aaa" and "destination.domain" not in plain


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("reported", ["client_first", "backend_first"])
def test_a_service_dialled_across_nodes_is_named_when_the_backends_node_reports(
    native: bool, reported: str
) -> None:
    """Client b (node-2) dials Service web, whose backend is pod a (node-1). The merge
    keeps the backend node's report (a's end is the smaller), which has no ``nat_dst``:
    the client's connect event, keyed by its local end, still names the Service, its
    domain and the client's process, as the client node's report would have."""
    vip = "10.96.0.30"
    e = enricher(native=native)
    inv = e.resolver
    assert isinstance(inv, Inventory)
    for name, address in (("web", vip), ("aaa", "10.96.0.31")):
        inv.upsert("services", objects.service_from_json(cluster.service(name, "shop", (address,))))
        slice_ = cluster.endpointslice(f"{name}-x", name, (A,), namespace="shop")
        inv.upsert("endpointslices", objects.endpointslice_from_json(slice_))
    # both select pod a: without the join, "aaa" (the first by name) is reported
    e.learn_dns([answered("node-2", B, "web.shop.svc.cluster.local", vip)])
    e.learn_sockets([sock("node-2", "connect", B, 40000, vip, 80, 21, "cb"),
                     sock("node-1", "accept", A, 8080, B, 40000, 11, "ca")])  # fmt: skip
    client_node = flow("node-2", B, A, 40000, 8080, initiator=True, nat_dst=vip, nat_dport=80)
    backend_node = (
        flow("node-1", B, A, 40000, 8080)
        if reported == "client_first"
        else flow("node-1", A, B, 8080, 40000, bytes=900, packets=3, rbytes=100, rpackets=2)
    )
    e.flows([flow("node-1", A, B, 1, 2), flow("node-2", B, A, 3, 4)])  # both nodes report
    assert e.flows([client_node]).tally.dedup_dropped == 1  # the backend's node owns it
    rec = only(e, [backend_node])
    assert rec["flow.direction"] == "forward"
    assert (rec["source.address"], rec["source.port"]) == (B, 40000)
    assert (rec["destination.address"], rec["destination.port"]) == (A, 8080)
    assert (rec["flow.bytes.delta"], rec["flow.reverse.bytes.delta"]) == (100, 900)
    assert rec["source.process.pid"] == 21 and rec["source.container.id"] == "cb"
    assert rec["destination.process.pid"] == 11 and rec["destination.k8s.pod.name"] == "a"
    assert rec["destination.k8s.service.name"] == "web"
    assert rec["destination.domain"] == "web.shop.svc.cluster.local"
    assert rec["flow.community_id"] == community_id(6, B, A, 40000, 8080)
    assert e.flow_lines([backend_node]).lines == {
        s: [orjson.dumps(r) + b"\n" for r in rs]
        for s, rs in e.flows([backend_node]).by_subject.items()
    }
    # another client port, or a socket that dialled the backend itself: no Service
    plain = only(e, [flow("node-1", B, A, 40001, 8080)])
    assert plain["destination.k8s.service.name"] == "aaa" and "destination.domain" not in plain
    e.learn_sockets([sock("node-2", "connect", B, 40002, A, 8080, 22, "cb")])
    direct = only(e, [flow("node-1", B, A, 40002, 8080)])
    assert direct["source.process.pid"] == 22
    assert direct["destination.k8s.service.name"] == "aaa"


@pytest.mark.parametrize("sockets", [[], [sock("node-1", "connect", A, 1, B, 2, 7)]])
@pytest.mark.parametrize(
    "change", [{"nat_dst": 5}, {"nat_dst": "not-an-ip"}, {"nat_dport": 70000}, {"nat_dport": "80"}]
)
def test_bad_dnat_fields_are_bad_records(change: dict, sockets: list[dict]) -> None:
    """Rejected whether or not the socket table is probed (it is not while empty)."""
    raw = flow("node-1", A, B, 40000, 8080, nat_dst="10.96.0.20", nat_dport=80) | change
    e = enricher()
    e.learn_sockets(sockets)
    out = e.flows([raw])
    assert len(out.bad) == 1 and not out.by_subject
    assert "nat_d" in str(out.bad[0][1])


def test_an_empty_socket_table_is_not_probed_and_changes_nothing() -> None:
    """Flows enriched while the socket table is empty (its four probes skipped) read
    exactly as against a table holding other sockets; the Community ID, hashed from the
    address cache's network-order bytes, is that of the canonical addresses, in either
    family and orientation."""
    v6a, v6b = "fd00:0:0::1", "FD00::2"  # not canonical: the cache canonicalises them
    raws = [
        flow("node-1", A, B, 40000, 8080, initiator=True),
        flow("node-2", B, A, 8080, 40000),
        flow("node-1", v6a, v6b, 5353, 53, proto=17),
        flow("node-1", v6b, v6a, 53, 5353, proto=17, end_reason="idle_timeout"),
        flow("node-1", A, "203.0.113.9", 40001, 443, proto=1),
    ]
    empty, other = enricher(), enricher()
    assert not other.learn_sockets([sock("node-3", "connect", "10.9.9.9", 1, B, 2, 7)])
    got, want = empty.flow_lines([dict(r) for r in raws]), other.flow_lines([dict(r) for r in raws])
    assert got.lines == want.lines and got.tally == want.tally and not got.bad
    assert got.tally.process_misses == 2 * len(raws) and got.tally.process_hits == 0
    ids = [orjson.loads(line) for lines in got.lines.values() for line in lines]
    assert len(ids) == len(raws) - 1 and got.tally.dedup_dropped == 1  # node-2's B → A
    for rec in ids:
        if rec["network.transport"] == "icmp":  # its ports (type, code) are reported as 0
            want_id = community_id(1, A, "203.0.113.9", 40001, 443)
        else:
            want_id = community_id(
                {"tcp": 6, "udp": 17}[rec["network.transport"]], rec["source.address"],
                rec["destination.address"], rec["source.port"], rec["destination.port"],
            )  # fmt: skip
        assert rec["flow.community_id"] == want_id
    assert {r["source.address"] for r in ids} >= {"fd00::1", "fd00::2"}


@pytest.mark.parametrize("pid", [-1, 2**32, 2**64])
def test_a_socket_event_with_an_impossible_pid_is_bad_and_joins_nothing(pid: int) -> None:
    # a pid orjson cannot write made every flow it joined fail to render, for good
    e = enricher()
    bad = e.learn_sockets([sock("node-1", "connect", "10.1.0.5", 40000, "10.2.0.7", 80, pid)])
    assert [str(error) for _, error in bad] == [
        "bad-record: raw.socket record #0: pid or tid out of range"
    ]
    record = only(e, [flow("node-1", "10.1.0.5", "10.2.0.7", 40000, 80)])
    assert "source.process.pid" not in record


@pytest.mark.parametrize("native", [False, True])
def test_a_dual_stack_pod_keeps_its_names_on_either_address(native: bool) -> None:
    """A pod with an IPv4 and an IPv6 address asks the IPv4 DNS server for AAAA, then
    connects over IPv6 (and the other way round): the flow gets its destination's name."""
    e = enricher(native=native)
    e.resolver.upsert("pods", objects.pod_from_json(  # type: ignore[attr-defined]
        cluster.pod("dual", ips=("10.1.0.8", "FD00:10:1:0::8"), node="node-1"), ()))  # fmt: skip

    def asked(client: str, qtype: str, name: str, address: str) -> dict[str, Any]:
        return {"observer": "node-1", "time_ns": 1, "id": 1, "qname": name, "qtype": qtype,
                "rcode": "NOERROR", "client": client, "client_port": 3333,
                "server": "10.96.0.10", "server_port": 53,
                "answers": [{"name": name, "type": qtype, "ttl": 30, "data": address}]}  # fmt: skip

    e.learn_dns([asked("10.1.0.8", "AAAA", "v6.example", "2001:db8::443"),
                 asked("fd00:10:1::8", "A", "v4.example", "203.0.113.9"),
                 asked(A, "AAAA", "single.example", "2001:db8::5")])  # fmt: skip
    v6 = only(e, [flow("node-1", "fd00:10:1::8", "2001:db8::443", 40000, 443, initiator=True)])
    assert (v6["source.k8s.pod.name"], v6["destination.domain"]) == ("dual", "v6.example")
    v4 = only(e, [flow("node-1", "10.1.0.8", "203.0.113.9", 40001, 443, initiator=True)])
    assert v4["destination.domain"] == "v4.example"
    # learned under each of the pod's addresses; a single-stack pod's answer once
    assert len(e.names) == 2 + 2 + 1
