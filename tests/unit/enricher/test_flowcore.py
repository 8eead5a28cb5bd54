"""The compiled flow core (flowcore.c) does exactly what the Python path does.

``Enricher(..., native=True).flow_lines`` runs the flow loop in C; ``native=False`` runs
``Enricher._flow`` with ``render_line``, the definition of a record. Every test here
builds two identical join states, feeds both the same raw flow batches (and the same
socket events, DNS exchanges and clock ticks between them) and asserts after every
step: the same lines (subjects in the same order, lines in the same order), the same
tally, the same bad records with the same errors, and the same join state afterwards
(LRU orders, TTLs extended by lookups, observers, caches). The C may take any shortcut
except one that shows.

That a single line is ``orjson.dumps(render_wire(...)) + b"\\n"`` is test_rendering.py's.
"""

from __future__ import annotations

import copy
import socket
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from flowscope.core import codec, subjects
from flowscope.core.errors import CodecError
from flowscope.core.records import END_REASONS, SOCKET_EVENTS
from flowscope.enricher import _flowcore, enriching
from flowscope.enricher.enriching import HISTORY, Enricher, Observers, Output, merge_owner
from flowscope.enricher.identities import Identity, external, identity
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.publishing import frame_lines, gather_lines
from flowscope.enricher.watching import resources
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.enricher import cluster
from tests.unit.enricher.cluster import Clock

# ---------------------------------------------------------------- the cluster

NODE_1, NODE_2, NODE_3 = "node-1", "node-2", "node-3"  # node-3 reports nothing by itself
A, A6 = "10.1.0.5", "fd00:1::5"  # pod web-5d-a on node-1 (Deployment, behind Service web)
B, B6 = "10.2.0.7", "fd00:2::7"  # pod db-0 on node-2 (StatefulSet)
C = "10.3.0.9"  # pod c on node-3
AGENT = "192.168.0.1"  # node-1's address, shared by its hostNetwork agent pod
WEB, WEB6, DNS = "10.96.0.10", "fd00:96::10", "10.96.0.53"  # Services
OUT4, OUT6 = "203.0.113.9", "2001:db8::1"  # outside the cluster
HOST, HOST6 = "10.0.0.1", "fd00::1"  # local mode: this machine's addresses
ESCAPES = 'q"u\\o\u00e9\u2603\x01\x1f\n\x7f'  # needs JSON escapes, and non-ASCII
LABELS = ("app", "note")  # label allow-list: "note" carries ESCAPES

V4 = (A, B, C, AGENT, WEB, DNS, OUT4, HOST, "192.168.0.2", "127.0.0.1", "0.0.0.0")
V6 = (A6, B6, WEB6, OUT6, HOST6, "fd00:ff::1", "::1", "::ffff:10.1.0.5", "fe80::1%eth0")
# other spellings of the same addresses: every one canonicalises to the key above
SPELLINGS = {
    OUT6: ("2001:DB8::0:1", "2001:db8:0:0:0:0:0:1"),
    A6: ("FD00:1::5", "fd00:1:0:0::5"),
    B6: ("fd00:0002::0007",),
    "::ffff:10.1.0.5": ("::ffff:a01:5", "::FFFF:10.1.0.5"),
}
BAD_ADDRESSES = ("", "10.1.0.256", "1.2.3.04", " 10.1.0.5", "fd00::1::2", "host-a", "x" * 100)
PORTS = (0, 53, 80, 443, 40000, 65535)
PROTOS = (6, 6, 6, 17, 17, 1, 58, 132, 47, 0, 255)
CONTAINER_IDS = ("", "ca", "ca2", "cb", "cc", "cagent", "cl", "gone", 'c"\\\u00e9')
# the containers of the pods (and of the hostNetwork agent) at an address
CONTAINERS_AT = {A: ("ca", "ca2"), A6: ("ca2",), B: ("cb",), B6: ("cb",), C: ("cc",),
                 AGENT: ("cagent",), "fd00:ff::1": ("cagent",), OUT4: ("cl",)}  # fmt: skip
# 0: the owner is not known; below 0 and above 2**32 - 1: the socket event is bad (before
# pids were range-checked, one of 2**64 or more made every flow it joined fail to render)
PIDS = (0, 1, 7, -1, 2**31, 2**64 - 1, 2**64 + 1)
COMMS = ("p", "", ESCAPES, "n\u00f6de", "x" * 40)
OBSERVERS = (NODE_1, NODE_1, NODE_2, NODE_2, NODE_3, "host-a", ESCAPES, "n\u00f6de \u2603")
QNAMES = ("web.shop.svc.cluster.local.", "Example.COM", "b\u00fccher.example",
          'q"uote\\s.example', "ctl\x01\x7f.example", "", ".")  # fmt: skip
TTLS = (0, 4, 5, 6, 30, 61, 3600)
TICKS = (0.0, 0.5, 1.0, 4.9, 5.0, 5.1, 29.0, 30.0, 31.0, 59.0, 61.0, 299.0, 300.0, 301.0)
LOCAL = frozenset({HOST, HOST6, "127.0.0.1", "::1"})  # local mode: this machine's addresses


def cluster_objects() -> list[tuple[str, dict[str, Any]]]:
    """(resource, JSON object): three nodes, four pods (one hostNetwork), two Services."""
    return [
        ("nodes", cluster.node(NODE_1, AGENT, "fd00:ff::1")),
        ("nodes", cluster.node(NODE_2, "192.168.0.2")),
        ("nodes", cluster.node(NODE_3, "192.168.0.3")),
        ("deployments", cluster.workload("Deployment", "web")),
        ("replicasets", cluster.workload("ReplicaSet", "web-5d", owner=("Deployment", "web"))),
        ("statefulsets", cluster.workload("StatefulSet", "db", "data")),
        ("pods", cluster.pod(
            "web-5d-a", ips=(A, A6), node=NODE_1, owner=("ReplicaSet", "web-5d"),
            containers=("main", "sidecar"), container_ids={"ca": "main", "ca2": "sidecar"},
            labels={"app": "web", "note": ESCAPES},
        )),
        ("pods", cluster.pod("db-0", "data", ips=(B, B6), node=NODE_2,
                             owner=("StatefulSet", "db"), container_ids={"cb": "main"})),
        ("pods", cluster.pod("c", "batch", ips=(C,), node=NODE_3, container_ids={"cc": "main"})),
        ("pods", cluster.pod("agent", "kube-system", ips=(AGENT,), node=NODE_1,
                             host_network=True, containers=("agent",),
                             container_ids={"cagent": "agent"})),
        ("services", cluster.service("web", cluster_ips=(WEB, WEB6))),
        ("services", cluster.service("dns", "kube-system", cluster_ips=(DNS,))),
        ("endpointslices", cluster.endpointslice("web-x", "web", (A, A6))),
    ]  # fmt: skip


CONVERT = {r.name: r.convert for r in resources(LABELS)}

# Changes to the cluster between batches: every one drops the inventory's identity cache,
# which nothing in the compiled core may outlive.
CHANGES = (
    lambda inv: inv.upsert("pods", CONVERT["pods"](cluster.pod(
        "late", "new", ips=(OUT4,), node=NODE_2, container_ids={"cl": "main"}))),
    lambda inv: inv.delete("pods", ("data", "db-0")),  # resolvable for its grace period
    lambda inv: inv.sweep(),
    lambda inv: inv.upsert("pods", CONVERT["pods"](cluster.pod(
        "web-5d-a", ips=(A6, A), node=NODE_1, owner=("ReplicaSet", "web-5d"),
        container_ids={"ca": "main"}, labels={"app": "web2"}))),
    lambda inv: inv.delete("services", ("shop", "web")),
    lambda inv: inv.upsert("endpointslices", CONVERT["endpointslices"](
        cluster.endpointslice("web-y", "web", (B, B6), "data"))),  # db-0 behind web too
    lambda inv: inv.upsert("replicasets", CONVERT["replicasets"](
        cluster.workload("ReplicaSet", "web-5d", owner=("StatefulSet", "web")))),
    lambda inv: inv.upsert("nodes", CONVERT["nodes"](cluster.node(NODE_2, "192.168.0.2", OUT6))),
    lambda inv: inv.upsert("pods", CONVERT["pods"](cluster.pod(  # the agent moves its container
        "agent", "kube-system", ips=(AGENT,), node=NODE_1, host_network=True,
        containers=("agent",), container_ids={"cagent2": "agent", "ca2": "agent"}))),
)  # fmt: skip


# ---------------------------------------------------------------- two join states


@dataclass(slots=True)
class World:
    """One join state, its clock, and the enricher over it."""

    clock: Clock
    resolver: Inventory | LocalResolver | Plain
    enricher: Enricher


class Plain:
    """A resolver with nothing but the protocol (no identity cache): a fresh identity per
    call, this machine's addresses as hosts."""

    @property
    def ready(self) -> bool:
        return True

    def resolve(self, address: str) -> Identity:
        if address in LOCAL:
            return identity("host", subjects.HOST_TOKEN, "host-a", address, {"k8s.note": "x"})
        return external(address)

    def by_container(self, container_id: str) -> Identity | None:
        return None

    def other_addresses(self, address: str) -> tuple[str, ...]:
        return ()


def world(
    mode: str, native: bool, ready: bool = True, cid_cache: int = 64, names: int = 6
) -> World:
    """A join state built the same way every time; ``mode``: kubernetes, local or plain.
    Small socket and name tables, so their LRU order decides evictions within a test."""
    clock = Clock()
    resolver: Inventory | LocalResolver | Plain
    if mode == "kubernetes":
        resolver = Inventory(60, clock=clock)
        for resource, obj in cluster_objects():
            resolver.upsert(resource, CONVERT[resource](obj))
        resolver.expected = {"pods"}
        if ready:
            resolver.mark_synced("pods")
    elif mode == "local":
        resolver = LocalResolver(LOCAL, "host-a")
    else:
        resolver = Plain()
    enricher = Enricher(
        resolver, SocketTable(8, 30, clock), NameCache(5, 60, names, clock), Observers(300, clock),
        clock, cid_cache=cid_cache, native=native,
    )  # fmt: skip
    return World(clock, resolver, enricher)


def outcome(out: Output | Exception) -> dict[str, Any]:
    """What a flow_lines call gave, in comparable values (errors by type and text)."""
    if isinstance(out, Exception):
        return {"raised": (type(out), str(out))}
    return {
        "lines": list(out.lines.items()),
        "types": {
            (type(subject), type(line)) for subject, lines in out.lines.items() for line in lines
        },
        "by_subject": out.by_subject,
        "tally": out.tally,
        "bad": [(rec, type(e), e.schema, e.index, str(e)) for rec, e in out.bad],
    }


def state(w: World) -> dict[str, Any]:
    """The join state a flow batch reads and changes, in comparable values: orders
    where they decide evictions (LRU tables), contents where a cache is dropped whole.
    Not the Community ID cache: the C core hashes every record instead (a pure function
    of the 5-tuple, so the cache never shows in a line)."""
    e = w.enricher
    return {
        "names": [(key, list(entry)) for key, entry in e.names._entries.items()],
        "sockets": list(e.sockets._sockets.items()),
        "locals": list(e.sockets._locals.items()),
        "dialled": dict(e.sockets._dialled),
        "closing": list(e.sockets._closing),
        "observers": list(e.observers.seen.items()),
        "minutes": {node: sorted(minutes) for node, minutes in e.observers.minutes.items()},
        "addresses": dict(e._addresses),
        "nat_ids": [(key[1], pair[1]) for key, pair in e._nat_ids.items()],
        "identities": dict(getattr(w.resolver, "_cache", {})),
        "containers": dict(getattr(w.resolver, "_container_cache", {})),
    }


class Twins:
    """Two identical join states, one enricher with the compiled core, one without; and
    a second such pair fed the same batches as a message body would bring them: the
    compiled core reads the NDJSON body itself (``Enricher.flow_batch``), the Python path
    enriches what ``codec.decode`` makes of it (JSON has no int or str subclasses, no
    tuples: a record may read differently after the trip, so each pair is compared
    within itself). A batch that cannot be encoded reaches the second pair as records."""

    def __init__(self, mode: str = "kubernetes", **options: Any) -> None:
        self.native = world(mode, True, **options)
        self.python = world(mode, False, **options)
        self.body_native = world(mode, True, **options)
        self.body_python = world(mode, False, **options)
        assert self.native.enricher.native and not self.python.enricher.native
        self.worlds = (self.native, self.python, self.body_native, self.body_python)
        self.rendered = 0  # bodies whose flow_body lines were checked (assert_rendered)

    def flows(self, batch: list[Any]) -> Output:
        """Both render the batch (each a deep copy); asserts the same outcome and state.
        Returns the Python path's output, for a test to check what it exercised."""
        out = self.attempt(batch)
        if isinstance(out, Exception):
            raise out
        return out

    def attempt(self, batch: list[Any]) -> Output | Exception:
        """:meth:`flows`, but what the Python path raised is returned: the C must raise
        the same (hostile socket events can make the Python path fail, see PIDS)."""
        results: list[Output | Exception] = []
        for w in self.worlds[:2]:
            records = copy.deepcopy(batch)
            try:
                out = w.enricher.flow_lines(records)
            except Exception as e:  # compared below: both must fail alike
                results.append(e)
            else:
                results.append(out)
                assert all(any(rec is r for r in records) for rec, _ in out.bad)  # as they came
            assert records == batch  # neither path changes a raw record in place
        native, python = (outcome(r) for r in results)
        for key in python:
            assert native[key] == python[key], key
        try:
            message = codec.encode(codec.RAW_FLOW, batch)
        except (TypeError, orjson.JSONEncodeError):
            self.as_records(batch)
        else:
            self.body(message.headers, message.body)
        self.same_state()
        return results[1]

    def body(self, headers: dict[str, str] | None, body: bytes) -> Output | Exception:
        """The second pair: one raw flow message, read by the compiled core
        (``flow_batch``) and by the Python path after ``codec.decode``; asserts the same
        outcome — a CodecError for a message that is not a batch of records — and state."""
        results: list[Output | Exception] = []
        try:
            results.append(self.body_native.enricher.flow_batch(headers, body))
        except Exception as e:  # compared below
            results.append(e)
        try:
            records = codec.decode(codec.RAW_FLOW, headers, body)
            results.append(self.body_python.enricher.flow_lines(records))
        except Exception as e:
            results.append(e)
        native, python = (outcome(r) for r in results)
        for key in python:
            assert native[key] == python[key], key
        if isinstance(results[0], Output) and results[0].rendered is not None:
            assert_rendered(results[0])  # None: the body went codec.decode's way
            self.rendered += 1
        self.same_state()
        return results[1]

    def as_records(self, batch: list[Any]) -> None:
        results: list[Output | Exception] = []
        for w in self.worlds[2:]:
            try:
                results.append(w.enricher.flow_lines(copy.deepcopy(batch)))
            except Exception as e:  # compared below
                results.append(e)
        native, python = (outcome(r) for r in results)
        for key in python:
            assert native[key] == python[key], key

    def sockets(self, events: list[Any]) -> None:
        for w in self.worlds:
            w.enricher.learn_sockets(copy.deepcopy(events))
        self.same_state()

    def dns(self, events: list[Any]) -> None:
        for w in self.worlds:
            w.enricher.learn_dns(copy.deepcopy(events))
        self.same_state()

    def tick(self, seconds: float) -> None:
        """Time passes: TTLs run out, closed sockets are forgotten."""
        for w in self.worlds:
            w.clock.now += seconds
            w.enricher.sockets.expire()
        self.same_state()

    def change(self, n: int) -> None:
        """The n-th of :data:`CHANGES` to the cluster, or to the host's addresses."""
        for w in self.worlds:
            if isinstance(w.resolver, LocalResolver):
                w.resolver.update(LOCAL | {OUT4} if n % 2 else LOCAL)
            elif isinstance(w.resolver, Inventory):
                CHANGES[n](w.resolver)
        self.same_state()

    def learn(self, addresses: list[str]) -> None:
        """What the enricher's warming task does: the identities a change left cold
        built ahead, and those addresses (with ``addresses``) taken in."""
        for w in self.worlds:
            built = w.resolver.warm(100) if isinstance(w.resolver, Inventory) else []
            w.enricher.learn_addresses(built + addresses)
        self.same_state()

    def same_state(self) -> None:
        for one, other in ((self.native, self.python), (self.body_native, self.body_python)):
            native, python = state(one), state(other)
            for key in python:
                assert native[key] == python[key], key


def assert_rendered(out: Output) -> None:
    """flow_body's lines (a ``_flowcore.Lines``, framed as they are) hold exactly its
    ``lines`` dict: the same subjects in order, the same count, the same frame."""
    rendered = out.rendered
    assert isinstance(rendered, _flowcore.Lines)
    assert rendered.subjects == tuple(out.lines) and len(rendered) == len(out.lines)
    assert rendered.count == sum(map(len, out.lines.values())) == out.tally.records_out
    assert rendered.lines() == out.lines and rendered.lines() is not rendered.lines()
    for max_body, reply in [(1 << 20, "_INBOX.r.1"), (300, "_INBOX.r.1"), (1 << 20, "a b")]:
        args = (codec.FLOW.header, "enricher:flow:7:", "done", "b1", reply, max_body)
        framed = frame_lines(rendered, *args)
        assert framed == frame_lines(out.lines, *args)
        gathered = gather_lines(rendered, *args)
        if framed is None:
            assert gathered is None
            continue
        assert gathered is not None and gathered[1:] == framed[1:]
        assert len(gathered[0]) == len(framed[0])
        assert gathered[0].rest() == framed[0] and len(gathered[0]) == 0
        assert sent_through_a_small_socket(gather_lines(rendered, *args)[0]) == framed[0]


def sent_through_a_small_socket(frame: _flowcore.Frame) -> bytes:
    """What arrives at the other end of a socket pair with a small send buffer as
    ``frame.send`` sends a piece at a time (a full buffer: it would block) and, after
    a few pieces, ``frame.rest()`` gives the remainder."""
    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sender.setblocking(False)
    receiver.setblocking(False)
    got = bytearray()
    try:
        for _ in range(3):
            before = len(frame)
            assert frame.send(sender.fileno()) == before - len(frame)
            while True:
                try:
                    got += receiver.recv(1 << 16)
                except BlockingIOError:
                    break
        return bytes(got) + frame.rest()
    finally:
        sender.close()
        receiver.close()


def lines_of(out: Output) -> list[bytes]:
    return [line for lines in out.lines.values() for line in lines]


# ---------------------------------------------------------------- raw records


# socket events and DNS exchanges a few seconds before the flows end: their observers
# count as running collectors for the flows (Observers judges a report at its end time)
EVENT_NS = 1_700_000_005_000_000_000


def flow(
    observer: str, src: str, dst: str, sport: int, dport: int, proto: int = 6, **more: Any
) -> dict[str, Any]:
    """A raw flow record (the collector's wire dict)."""
    return {"observer": observer, "start_ns": 1_700_000_000_000_000_000,
            "end_ns": 1_700_000_010_000_000_000, "end_reason": "active_timeout", "proto": proto,
            "src": src, "dst": dst, "sport": sport, "dport": dport, "bytes": 1500,
            "packets": 3, "rbytes": 900, "rpackets": 2, **more}  # fmt: skip


def sock(
    observer: str, event: str, src: str, sport: int, dst: str, dport: int, pid: int = 7,
    container_id: str = "", proto: int = 6, comm: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A raw socket event: on ``observer``, ``pid`` owns src:sport ↔ dst:dport."""
    return {"observer": observer, "time_ns": EVENT_NS, "event": event, "proto": proto, "src": src,
            "sport": sport, "dst": dst, "dport": dport, "pid": pid, "tid": pid,
            "comm": f"p{pid}" if comm is None else comm, "container_id": container_id}  # fmt: skip


def dns(client: str, qname: str, address: str, ttl: int, observer: str = NODE_1) -> dict[str, Any]:
    """A raw DNS exchange: ``client`` asked ``qname`` and got ``address``."""
    return {"observer": observer, "time_ns": EVENT_NS, "id": 1, "qname": qname, "qtype": "A",
            "rcode": "NOERROR", "client": client, "client_port": 5353, "server": DNS,
            "server_port": 53, "answers": [{"name": qname, "type": "A" if ":" not in address
                                            else "AAAA", "ttl": ttl, "data": address}]}  # fmt: skip


class Sub(int):
    """An int subclass: not an int on the wire (type checks are exact)."""


class Text(str):
    """A str subclass: not a str on the wire."""


GOOD = flow(NODE_1, A, B, 40000, 80, tcp_flags=0x12, initiator=True)
JUNK = (None, True, False, -1, 256, 65536, -(2**63), 2**64, 1.5, "6", "", [], {}, Sub(6),
        Text("10.1.0.5"), "bogus")  # fmt: skip


def bad_records() -> list[Any]:
    """One record for every way a raw flow can be bad."""
    out: list[Any] = [None, [], "flow", 7, b"{}", (GOOD,), {}]
    for key in GOOD:
        if key not in ("tcp_flags", "initiator"):
            out.append({k: v for k, v in GOOD.items() if k != key})  # each key missing
    for key in GOOD:
        for junk in (None, True, "1", 1.0, Sub(1), Text("x")):
            if type(junk) is not type(GOOD[key]):
                out.append({**GOOD, key: junk})  # each key of a wrong type
    for key in ("sport", "dport"):
        out += [{**GOOD, key: -1}, {**GOOD, key: 65536}, {**GOOD, key: 2**64}]
    out += [{**GOOD, "proto": -1}, {**GOOD, "proto": 256}, {**GOOD, "tcp_flags": 256},
            {**GOOD, "tcp_flags": -1}, {**GOOD, "initiator": 1}, {**GOOD, "initiator": None},
            {**GOOD, "ifindex": None}, {**GOOD, "ifindex": True}, {**GOOD, "ifindex": "2"}]  # fmt: skip
    for key in ("bytes", "packets", "rbytes", "rpackets"):
        out += [{**GOOD, key: -1}, {**GOOD, key: -(2**70)}]
    out += [{**GOOD, "end_reason": r} for r in ("", "Active_timeout", "timeout", ESCAPES)]
    out += [{**GOOD, "src": text} for text in BAD_ADDRESSES]
    out += [{**GOOD, "dst": text} for text in BAD_ADDRESSES]
    out += [{**GOOD, "dst": B6}, {**GOOD, "src": "::ffff:10.1.0.5"}]  # mixed families
    out += [{**GOOD, "end_reason": "bogus", "sport": -1, "src": ""}]  # the first fault wins
    return out


# Not what the collector sends, but records all the same: the Python path reads keys
# from any dict (a defaultdict's default is never asked for: every key is there).
ODD_BUT_GOOD = [
    OrderedDict(GOOD),
    defaultdict(int, GOOD),
    {k: v for k, v in GOOD.items() if k not in ("tcp_flags", "initiator")},
    {**GOOD, "nat_dst": None},  # no NAT
    {"extra": [1, {"a": None}], **GOOD, "ifindex": 2**70},
]


# ---------------------------------------------------------------- explicit cases


def test_the_compiled_core_is_compared() -> None:
    # Without the C module both twins would run the Python path and agree trivially.
    assert enriching.NATIVE_AVAILABLE
    assert Twins().native.enricher.native


def test_first_use_then_cached_addresses_every_protocol_and_family() -> None:
    twins = Twins()
    batch = [
        flow(NODE_1, A, B, 40000, 80, tcp_flags=0x12, initiator=True),
        flow(NODE_1, A, OUT4, 0, 65535, tcp_flags=0xFF),
        flow(NODE_2, B6, "2001:DB8::0:1", 65535, 0, tcp_flags=0),
        flow(NODE_1, AGENT, DNS, 5353, 53, proto=17, ifindex=3, vlan="x"),
        flow(NODE_1, A, B, 8, 0, proto=1),  # ICMP echo request: a counterpart type
        flow(NODE_2, B, A, 0, 0, proto=1),  # its reply
        flow(NODE_1, A, B, 3, 1, proto=1),  # destination unreachable: one-way
        flow(NODE_1, A6, B6, 128, 0, proto=58),  # ICMPv6 echo request
        flow(NODE_1, A6, "::ffff:10.1.0.5", 1, 4, proto=58),  # one-way, IPv4-mapped
        flow(NODE_1, "fe80::1%eth0", A6, 5, 6, proto=132),
        flow(NODE_3, C, WEB, 1, 2, proto=47, initiator=False),
        flow(NODE_1, "127.0.0.1", "127.0.0.1", 80, 80, proto=0),
    ]
    first = twins.flows(batch)
    assert first.tally.records_out == len(batch) - 1 and not first.bad  # the reply: merged
    again = twins.flows(batch)  # the addresses cached now: the C core takes these itself
    assert lines_of(again) == lines_of(first)
    twins.flows([{**r, "end_reason": "idle_timeout"} for r in batch])  # final: IDs dropped
    assert not twins.python.enricher._cids
    twins.flows([{**r, "end_reason": "end_of_flow_detected"} for r in batch])


def test_counters_timestamps_and_flags_at_their_limits() -> None:
    twins = Twins()
    big = (0, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**100)
    batch = [
        flow(NODE_1, A, B, 40000, 80, bytes=n, packets=n, rbytes=n, rpackets=n,
             start_ns=n, end_ns=n, tcp_flags=n % 256)
        for n in big
    ]  # fmt: skip
    batch += [flow(NODE_1, A, B, 1, 2, tcp_flags=bits) for bits in range(256)]
    batch += [flow(NODE_1, A, B, 1, 2, start_ns=2**70, end_ns=2**70, ifindex=-(2**70))]
    out = twins.flows(batch)
    assert out.tally.records_out == len(batch)


def test_a_record_with_every_optional_part() -> None:
    # TCP flags, a process at both ends, a name for both addresses: the longest line (a
    # fixed array of its pieces in flowcore.c's render once held two too few).
    twins = Twins()
    twins.sockets([sock(NODE_1, "connect", A, 40000, B, 80, 11, "ca"),
                   sock(NODE_2, "accept", B, 80, A, 40000, 12, "cb")])  # fmt: skip
    twins.dns([dns(A, "db.example", B, 600), dns(B, "web.example", A, 600, NODE_2)])
    record = flow(NODE_1, A, B, 40000, 80, tcp_flags=0x1B)
    for _ in range(2):  # the addresses are cached the second time: the C core's own path
        (line,) = lines_of(twins.flows([record]))
        wire = orjson.loads(line)
        assert wire["destination.domain"] == "db.example" and wire["source.domain"] == "web.example"
        assert wire["source.process.pid"] == 11 and wire["destination.process.pid"] == 12
        assert wire["flow.tcp.flags.tags"] == ["FIN", "SYN", "PSH", "ACK"]


def test_every_kind_of_bad_record_in_between_good_ones() -> None:
    twins = Twins()
    bad = bad_records()
    batch: list[Any] = []
    for record in bad:
        batch += [record, GOOD]
    twins.flows([GOOD])  # the good one's addresses cached: the rest take the fast path
    out = twins.flows(batch + ODD_BUT_GOOD)
    assert len(out.bad) == len(bad)
    assert out.tally.records_out == len(bad) + len(ODD_BUT_GOOD)
    twins.flows(bad)  # a batch of nothing but bad records


def message(lines: list[bytes], **headers: str) -> tuple[dict[str, str], bytes]:
    """A raw flow message of these lines (each given without its newline)."""
    body = b"".join(line + b"\n" for line in lines)
    return {codec.SCHEMA_HEADER: codec.RAW_FLOW.header, codec.COUNT_HEADER: str(len(lines)),
            **headers}, body  # fmt: skip


GOOD_LINE = orjson.dumps(GOOD)
# Lines the compiled core does not read itself (not as the collector writes them) but
# orjson does: the core hands them over as orjson's dicts. Every one must come out as the
# Python path has it — a record, or a bad record with its error.
ORJSON_LINES = [
    orjson.dumps(GOOD, option=orjson.OPT_INDENT_2).replace(b"\n", b""),  # white space
    GOOD_LINE.replace(b'"node-1"', b'"node\\u002d1"'),  # an escape in a value
    GOOD_LINE.replace(b'"observer"', b'"\\u006fbserver"'),  # ... in a key
    GOOD_LINE.replace(b'"node-1"', '"n\u00f6de"'.encode()),  # UTF-8
    GOOD_LINE.replace(b'"bytes":1500', b'"bytes":1500.0'),  # a float: bad
    GOOD_LINE.replace(b'"bytes":1500', b'"bytes":15e2'),
    GOOD_LINE.replace(b'"tcp_flags":18', b'"tcp_flags":null'),
    GOOD_LINE.replace(b'"sport":40000', b'"sport":1,"sport":40000'),  # the last one counts
    GOOD_LINE.replace(b'"sport":40000', b'"sport":40000,"sport":"x"'),
    GOOD_LINE.replace(b"{", b'{"extra":[1,{"a":null}],'),  # a key of no use
    GOOD_LINE.replace(b"{", b'{"nat_dst":"10.96.0.10","nat_dport":80,'),
    GOOD_LINE.replace(b"{", b'{"nat_dst":null,'),
    GOOD_LINE.replace(b'"bytes":1500', b'"bytes":18446744073709551615'),  # 2**64 - 1
    GOOD_LINE.replace(b'"packets":3', b'"packets":9223372036854775808'),  # 2**63
    GOOD_LINE.replace(b'"start_ns":1700000000000000000', b'"start_ns":-9223372036854775809'),
    GOOD_LINE.replace(b'"proto":6', b'"proto":256'),
    GOOD_LINE.replace(b'"dport":80', b'"dport":-1'),
    GOOD_LINE.replace(b'"initiator":true', b'"initiator":1'),
    GOOD_LINE.replace(b',"rpackets":2', b""),  # a key missing
    b"{}",
]
# Lines the core reads itself: every field at its limits, optional keys absent or not.
PLAIN_LINES = [
    GOOD_LINE,
    GOOD_LINE.replace(b'"packets":3', b'"packets":9223372036854775807'),  # 2**63 - 1
    GOOD_LINE.replace(b'"start_ns":1700000000000000000', b'"start_ns":-9223372036854775808'),
    GOOD_LINE.replace(b'"start_ns":1700000000000000000', b'"start_ns":-0'),
    GOOD_LINE.replace(b'"initiator":true', b'"initiator":false'),
    GOOD_LINE.replace(b'"sport":40000', b'"sport":0').replace(b'"dport":80', b'"dport":65535'),
    GOOD_LINE.replace(b"{", b'{"ifindex":-9223372036854775808,'),
    orjson.dumps({k: v for k, v in GOOD.items() if k not in ("tcp_flags", "initiator")}),
    orjson.dumps({**GOOD, "end_reason": "bogus"}),  # plain, but a bad record
    orjson.dumps({**GOOD, "src": "10.1.0.256"}),
    orjson.dumps({**GOOD, "dst": B6}),  # families differ: bad
    orjson.dumps({**GOOD, "src": "x" * 100}),  # longer than any address
    orjson.dumps({**GOOD, "src": ""}),
    orjson.dumps({**GOOD, "src": OUT4, "dst": OUT4, "proto": 1, "sport": 8, "dport": 0}),
    # the keys in the collector's order (each tried first), then in others
    orjson.dumps({**GOOD, "ifindex": 7}),
    orjson.dumps(dict(reversed(list({**GOOD, "ifindex": 7}.items())))),
    orjson.dumps({"src": A, **{k: v for k, v in GOOD.items() if k != "src"}}),
]
# Bodies that are not a batch of records: codec.decode's error, and nothing enriched.
NOT_RECORDS = [
    [GOOD_LINE, b"[]", GOOD_LINE],
    [GOOD_LINE, b"null"],
    [b'"flow"'],
    [GOOD_LINE[:-1]],  # truncated
    [GOOD_LINE + GOOD_LINE],  # two values on a line
    [GOOD_LINE.replace(b"}", b",}")],  # a trailing comma
    [GOOD_LINE.replace(b'"sport":40000', b'"sport":040000')],  # a leading zero
    [GOOD_LINE.replace(b'"node-1"', b'"node\x01"')],  # a control character
    [GOOD_LINE.replace(b'"node-1"', b'"node\xff"')],  # not UTF-8
    [GOOD_LINE, b""],  # an empty line
    [GOOD_LINE, b" "],
]


def test_message_bodies_read_by_the_compiled_core() -> None:
    twins = Twins()
    for _ in range(2):  # addresses seen for the first time, then cached
        out = twins.body(*message(PLAIN_LINES + ORJSON_LINES + PLAIN_LINES))
        assert isinstance(out, Output) and out.tally.records_in == 2 * len(PLAIN_LINES) + len(
            ORJSON_LINES
        )
        assert 10 < len(out.bad) < 30 and out.tally.records_out > 10
    # many lines the core leaves to orjson among a few it reads (its record slots are
    # sized by the body's bytes, not its line count)
    out = twins.body(*message(([b"{}"] * 99 + [GOOD_LINE]) * 50))
    assert isinstance(out, Output) and len(out.bad) == 99 * 50 and out.tally.records_out == 50
    for lines in NOT_RECORDS:
        assert isinstance(twins.body(*message(lines)), CodecError)
    headers, body = message([GOOD_LINE] * 3)
    for bad_headers, bad_body in [
        ({**headers, codec.COUNT_HEADER: "2"}, body),  # the count is wrong
        ({**headers, codec.COUNT_HEADER: "03"}, body),
        ({**headers, codec.COUNT_HEADER: "\u00b3"}, body),  # a digit, not 0-9
        ({**headers, codec.COUNT_HEADER: "3" * 5000}, body),  # int() refuses it: ValueError
        ({**headers, codec.COUNT_HEADER: "4"}, body),
        ({**headers, codec.SCHEMA_HEADER: codec.RAW_DNS.header}, body),
        ({}, body),
        (None, body),
        (headers, body[:-1]),  # no final newline
        (headers, b""),  # no records, where the count says 3
    ]:
        assert isinstance(twins.body(bad_headers, bad_body), CodecError)
    out = twins.body({codec.SCHEMA_HEADER: codec.RAW_FLOW.header}, body)  # no count: fine
    assert isinstance(out, Output) and out.tally.records_out == 3
    assert twins.rendered >= 4
    out = twins.body({codec.SCHEMA_HEADER: codec.RAW_FLOW.header, codec.COUNT_HEADER: "0"}, b"")
    assert isinstance(out, Output) and out.tally.records_in == 0


# Bytes that mean something to a JSON reader (and a few that must not appear), for
# damaging a body a byte at a time.
SIGNIFICANT = b'"\\{}[],:-+.0123456789eEntfrul \t\r\n\x00\x01\x7f\xc3\xa9\xff'


@st.composite
def damaged(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A raw flow message of good and orjson-read lines, then damaged: bytes replaced,
    put in or taken out, a stretch repeated elsewhere, the body cut short; its count
    header as the lines were, or as the damaged body has them."""
    headers, body = message(draw(st.lists(st.sampled_from(PLAIN_LINES + ORJSON_LINES),
                                          min_size=1, max_size=4)))  # fmt: skip
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from(SIGNIFICANT))
        kind = draw(st.sampled_from(("replace", "replace", "insert", "delete", "repeat", "cut")))
        if kind == "replace" and at < len(data):
            data[at] = byte
        elif kind == "insert":
            data.insert(at, byte)
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "repeat":
            start = draw(st.integers(0, len(data)))
            data[at:at] = data[start : start + draw(st.integers(1, 24))]
        elif kind == "cut":
            del data[at:]
    if draw(st.booleans()):
        headers[codec.COUNT_HEADER] = str(data.count(b"\n"))
    return headers, bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(damaged(), min_size=1, max_size=3))
def test_any_damage_to_a_body_is_read_as_the_python_path_reads_it(
    messages: list[tuple[dict[str, str], bytes]],
) -> None:
    """The compiled core's own NDJSON reader against codec.decode (orjson) on damaged
    bodies: the same records, the same bad records and errors, or the same CodecError
    for the whole message, and the same state after; never a crash."""
    twins = Twins()
    for headers, body in messages:
        twins.body(headers, body)


class Wide(Plain):
    """Every address a pod with 40 long labels: each line ~30 times its raw record, so
    flow_body's buffer (4 times the raw body, and 64 KiB) grows several times."""

    def resolve(self, address: str) -> Identity:
        meta = {f"k8s.pod.labels.l{i}": f"{address}-{i}-" + "v" * 80 for i in range(40)}
        return identity("pod", "wide", "", address, meta)


def test_lines_longer_than_the_buffer_they_start_in() -> None:
    native, python = (
        Enricher(Wide(), SocketTable(8, 30), NameCache(5, 60, 6), Observers(300), native=n)
        for n in (True, False)
    )  # fmt: skip
    records = [
        orjson.dumps({**GOOD, "src": f"10.9.{i // 250}.{i % 250}", "sport": 1000 + i})
        for i in range(400)
    ] + ORJSON_LINES  # and lines through the Python path, appended in between
    out = native.flow_batch(*message(records))
    expected = python.flow_lines(codec.decode(codec.RAW_FLOW, *message(records)))
    assert outcome(out) == outcome(expected)
    assert_rendered(out)
    assert sum(map(len, lines_of(out))) > 30 * len(message(records)[1])


def test_flow_batch_without_the_compiled_core_decodes_then_enriches() -> None:
    python, reference = world("kubernetes", False), world("kubernetes", False)
    lines = PLAIN_LINES + ORJSON_LINES
    out = python.enricher.flow_batch(*message(lines))
    expected = reference.enricher.flow_lines(codec.decode(codec.RAW_FLOW, *message(lines)))
    assert outcome(out) == outcome(expected)
    with pytest.raises(CodecError, match="count"):
        python.enricher.flow_batch(
            {**message(lines)[0], codec.COUNT_HEADER: "1"}, message(lines)[1]
        )


def test_the_address_table_under_many_addresses_and_another_enricher() -> None:
    # More distinct address texts than the core's table keeps (65,536), spelled several
    # ways, with a second enricher (another _addresses dict) in between: it only caches.
    twins = Twins()
    other = world("kubernetes", True)
    lines = []
    for i in range(70_000):  # the table grows (and is emptied) on either end's address
        new = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        src, dst = ((new, A), (A, new), (new, f"172.16.{(i >> 8) & 255}.{i & 255}"))[i % 3]
        lines.append(orjson.dumps(flow(NODE_1, src, dst, 1000 + i % 5000, 80)))
    for start in range(0, len(lines), 10_000):
        chunk = lines[start : start + 10_000]
        twins.body(*message(chunk))
        twins.body(*message(chunk))
        other.enricher.flow_batch(*message(chunk[:100]))
    twins.body(*message(lines[:1000]))


def test_sockets_orient_flows_refine_containers_and_two_reports_become_one() -> None:
    twins = Twins()
    twins.flows([flow(NODE_1, A, B, 40000, 80), flow(NODE_2, B, A, 80, 40000)])
    twins.sockets([
        sock(NODE_1, "connect", A, 40000, B, 80, 11, "ca2"),  # the sidecar container
        sock(NODE_2, "accept", B, 80, A, 40000, 12, "cb"),
        sock(NODE_2, "udp", B, 53, "", 0, 13, "cb", proto=17),  # listeners: local table
        sock(NODE_2, "accept", B6, 443, "::", 0, 0, proto=6),  # pid 0: orients only
        sock(NODE_1, "connect", AGENT, 41000, OUT4, 443, 14, "cagent"),  # hostNetwork pod
        sock(NODE_1, "accept", A, 80, C, 42000, 15, "ca"),
        sock(NODE_1, "accept", A, 80, "0.0.0.0", 0, 16, "gone"),  # an unknown container
    ])  # fmt: skip
    batch = [
        flow(NODE_1, A, B, 40000, 80),  # connect on A: forward
        flow(NODE_2, B, A, 80, 40000),  # the same connection, reported oriented B → A
        flow(NODE_2, B, A, 53, 40001, proto=17),
        flow(NODE_2, "FD00:2::7", A6, 443, 50000),  # accept on B6: swapped
        flow(NODE_1, OUT4, AGENT, 443, 41000),  # connect on the agent: swapped, refined
        flow(NODE_1, A, C, 80, 42000),  # node-3 runs no collector (yet): kept
    ]
    out = twins.flows(batch)
    dropped = out.tally.dedup_dropped
    assert dropped and out.tally.process_hits >= 6
    text = b"".join(lines_of(out))
    assert b'"flow.direction":"forward"' in text and b'.k8s.container.name":"agent"' in text
    twins.sockets([sock(NODE_3, "udp", C, 9, "", 0, 3, "cc")])  # node-3 reports: now active
    batch.append(flow(NODE_3, C, A, 42000, 80))
    out = twins.flows(batch)
    assert out.tally.dedup_dropped == dropped + 1  # one of the two reports of A ↔ C
    twins.sockets([sock(NODE_1, "close", A, 40000, B, 80), sock(NODE_2, "close", B, 53, "", 0,
                                                                 proto=17)])  # fmt: skip
    twins.flows(batch)  # closed, within the grace period
    twins.tick(31)
    twins.flows(batch)  # forgotten
    later = [{**f, "end_ns": f["end_ns"] + 301 * 10**9} for f in reversed(batch)]
    twins.flows(later)  # 301 s on: every observer inactive again but the reporters


def test_observers_are_judged_by_event_times() -> None:
    """A node counts as running a collector by the times of its events, compared with
    the time of the report: replayed old events do not make a silent node live (its
    connections' reports by the other node would be dropped, and lost), events out of
    order do not make it older, and both cores agree at every step."""
    twins = Twins()
    second = 10**9
    at = EVENT_NS + 5 * second  # when flow() ends
    assert merge_owner((A, 40000), (B, 80), NODE_1, NODE_2) == NODE_1
    # node-1's newest event is 290 s before `at`, replayed at start, with older ones
    twins.sockets([{**sock(NODE_1, "connect", A, 40000, B, 80, 11, "ca"),
                    "time_ns": at - 290 * second}])  # fmt: skip
    twins.sockets([{**sock(NODE_1, "udp", A, 53, "", 0, 13, "ca", proto=17),
                    "time_ns": at - 900 * second}])  # fmt: skip
    dropped = twins.flows([flow(NODE_2, B, A, 80, 40000)])  # node-1 live at `at`
    assert dropped.tally.dedup_dropped == 1
    later = {"end_ns": at + 20 * second}  # node-1 silent for 310 s by then
    kept = twins.flows([flow(NODE_2, B, A, 80, 40000, **later)])
    assert (kept.tally.records_out, kept.tally.dedup_dropped) == (1, 0)
    twins.sockets([{**sock(NODE_1, "connect", A, 40000, B, 80, 11, "ca"),
                    "time_ns": at - 290 * second}])  # replayed again: nothing changes  # fmt: skip
    kept = twins.flows([flow(NODE_2, B, A, 80, 40000, **later)])
    assert (kept.tally.records_out, kept.tally.dedup_dropped) == (1, 0)
    # one batch mixing observers, 400 s on: node-2's first report is kept (node-1 was
    # last heard of 690 s before), node-1's report makes it live again: node-2's next
    # is dropped
    mixed = twins.flows([flow(NODE_2, B, A, 80, 40000, end_ns=at + 400 * second),
                         flow(NODE_1, A, B, 40000, 80, end_ns=at + 400 * second),
                         flow(NODE_2, B, A, 80, 40000, end_ns=at + 401 * second),
                         flow(NODE_1, A, B, 40000, 80, end_ns=at + 401 * second)])  # fmt: skip
    assert (mixed.tally.records_out, mixed.tally.dedup_dropped) == (3, 1)
    # one event of node-1 far ahead (a clock stepped) does not hide its events around
    # node-2's report (by the minutes they fell in): still dropped
    twins.flows([flow(NODE_1, A, B, 40000, 80, end_ns=at + 1200 * second)])
    ahead = twins.flows([flow(NODE_2, B, A, 80, 40000, end_ns=at + 402 * second)])
    assert ahead.tally.dedup_dropped == 1
    # node-2's report where node-1 had no event within ttl, its newest far away either
    # side: not live (kept twice, not lost)
    for end_ns in (at + 800 * second, at + 1600 * second):
        alone = twins.flows([flow(NODE_2, B, A, 80, 40000, end_ns=end_ns)])
        assert (alone.tally.records_out, alone.tally.dedup_dropped) == (1, 0)
    # times the compiled core holds to 64 bits, and beyond (the Python path's records)
    for end_ns in (-1, 0, 2**63 - 1, 2**63, 2**64 - 1, 2**64 + 5):
        twins.flows([flow(NODE_2, B, A, 80, 40000, end_ns=end_ns),
                     flow(NODE_1, A, B, 40000, 80, end_ns=end_ns)])  # fmt: skip


def test_a_backlog_older_than_the_ttl_is_merged_by_the_events_around_it() -> None:
    """Reports read long after they were made (an enricher outage, a lagging consumer):
    the replayed state has just shown both nodes' newest events, 400 s after the
    reports. Both nodes' earlier reports in the backlog show them running collectors at
    the time, so the connection both counted is kept once, as it is when fresh."""
    twins = Twins()
    second = 10**9
    now = EVENT_NS + 3600 * second
    old = now - 400 * second
    assert merge_owner((A, 40000), (B, 80), NODE_1, NODE_2) == NODE_1
    twins.sockets([{**sock(NODE_1, "connect", A, 41000, OUT4, 443, 11, "ca"), "time_ns": now},
                   {**sock(NODE_2, "connect", B, 41000, OUT4, 443, 12, "cb"), "time_ns": now}])  # fmt: skip
    # the backlog: each node's earlier reports (other connections), then both reports
    # of one A → B connection, in either order
    twins.flows([flow(NODE_2, B, OUT4, 42000, 443, end_ns=old - 30 * second)])
    twins.flows([flow(NODE_1, A, OUT4, 42000, 443, end_ns=old - 30 * second)])
    both = twins.flows([flow(NODE_2, B, A, 80, 40000, end_ns=old),
                        flow(NODE_1, A, B, 40000, 80, end_ns=old)])  # fmt: skip
    assert (both.tally.records_out, both.tally.dedup_dropped) == (1, 1)
    # an hour further back than anything either node sent: not live, both kept
    back = {"start_ns": old - 3610 * second, "end_ns": old - 3600 * second}
    older = twins.flows([flow(NODE_2, B, A, 80, 40001, **back),
                         flow(NODE_1, A, B, 40001, 80, **back)])  # fmt: skip
    assert (older.tally.records_out, older.tally.dedup_dropped) == (2, 0)


def test_a_batch_from_many_observers_keeps_each_nodes_minutes() -> None:
    """A raw batch whose records come from several nodes, minutes interleaved and out of
    order (the compiled core skips Observers.in_minute when the node's minutes already
    end with that minute): the same minutes as the Python path, node by node."""
    twins = Twins()
    minute = 60 * 10**9
    ends = [(NODE_1, 5), (NODE_2, 5), (NODE_1, 5), (NODE_3, 7), (NODE_1, 6), (NODE_2, 5),
            (NODE_1, 5), (NODE_3, 6), (NODE_2, 9), (NODE_2, 8), (NODE_1, 6), (NODE_3, 7)]  # fmt: skip
    batch = [flow(node, A, OUT4, 40000 + i, 443, end_ns=EVENT_NS + m * minute)
             for i, (node, m) in enumerate(ends)]  # fmt: skip
    twins.flows(batch)
    twins.flows(batch[::-1])
    base = EVENT_NS // minute
    minutes = {node: list(m) for node, m in twins.native.enricher.observers.minutes.items()}
    assert minutes == {NODE_1: [base + 5, base + 6], NODE_2: [base + 5, base + 8, base + 9],
                       NODE_3: [base + 6, base + 7]}  # fmt: skip


def test_observers_keep_a_bounded_history() -> None:
    observers = Observers(300.0)
    minute = 60 * 10**9
    for m in range(HISTORY + 50):
        observers.saw(NODE_1, m * minute)
    assert len(observers.minutes[NODE_1]) == HISTORY
    assert min(observers.minutes[NODE_1]) == 50  # the oldest forgotten first
    assert observers.active(NODE_1, 600 * minute) and not observers.active(NODE_1, 20 * minute)


def test_dns_names_expire_and_lookups_extend_them() -> None:
    twins = Twins(names=10)  # pod a is dual-stack: its answers take two entries each
    twins.dns([dns(A, "Example.COM.", OUT4, 3), dns(A, "b\u00fccher.example", OUT6, 3600),
               dns(B, ESCAPES, A, 30), dns(A6, "v6.example", "2001:DB8::0:1", 6),
               dns(A, "web.shop", WEB, 60, observer=ESCAPES)])  # fmt: skip
    batch = [flow(NODE_1, A, OUT4, 40000, 443), flow(NODE_1, A, OUT6, 40001, 443),
             flow(NODE_1, B, A, 40002, 80), flow(NODE_1, A6, OUT6, 40003, 443),
             flow(NODE_1, A, WEB, 40004, 80)]  # fmt: skip
    out = twins.flows(batch)
    assert out.tally.dns_hits == 4
    twins.tick(4.9)  # the 3 s answer was clamped to 5 s; the lookup extended it
    twins.flows(batch)
    twins.tick(4.0)
    twins.flows(batch[:1])
    twins.tick(5.0)  # expired, unless looked up in between
    twins.flows(batch)
    twins.tick(61)
    out = twins.flows(batch)
    assert out.tally.dns_hits == 0


def test_nat_records_valid_and_not() -> None:
    twins = Twins()
    twins.sockets([sock(NODE_1, "connect", A, 40000, WEB, 80, 11, "ca")])
    twins.dns([dns(A, "web.shop.svc", WEB, 60)])
    nat = {"nat_dst": WEB, "nat_dport": 80}
    batch = [
        flow(NODE_1, A, B, 40000, 8080, **nat),
        flow(NODE_2, B, A, 8080, 40000, **nat),
        flow(NODE_1, A, B, 40000, 8080, nat_dst=WEB),  # no port: bad
        flow(NODE_1, A, B, 40000, 8080, nat_dst=WEB, nat_dport=70000),
        flow(NODE_1, A, B, 40000, 8080, nat_dst="web", nat_dport=80),
        flow(NODE_1, A, B, 40000, 8080, nat_dst=5, nat_dport=80),
        flow(NODE_1, A, B, 40000, 8080, nat_dst=None),  # None: not NAT'ed
        flow(NODE_1, A, B, 40000, 8080, nat_dst=OUT6, nat_dport=80),  # another family
        flow(NODE_1, A, B, 40000, 8080, nat_dst=DNS, nat_dport=53, initiator=True),
    ]
    out = twins.flows(batch)
    assert out.bad and out.tally.records_out
    twins.flows(batch)


def test_a_service_dialled_from_another_node_reported_by_the_backends_node() -> None:
    """No ``nat_dst``, but the client's connect event names a Service address: the
    compiled core leaves the record to the Python path, which joins it as DNAT'ed; a
    socket that dialled a pod or an external address, or nothing, stays the core's."""
    twins = Twins()
    twins.sockets([sock(NODE_2, "connect", B, 40000, WEB, 80, 21, "cb"),
                   sock(NODE_2, "connect", B, 40001, OUT4, 443, 22, "cb"),
                   sock(NODE_1, "accept", A, 8080, B, 40000, 11, "ca")])  # fmt: skip
    twins.dns([dns(B, "web.shop.svc", WEB, 60, NODE_2)])
    twins.flows([flow(NODE_1, A, OUT4, 1, 2), flow(NODE_2, B, OUT4, 3, 4)])  # both report
    batch = [
        flow(NODE_2, B, A, 40000, 8080, nat_dst=WEB, nat_dport=80, initiator=True),
        flow(NODE_1, B, A, 40000, 8080),
        flow(NODE_1, A, B, 8080, 40000),
        flow(NODE_1, B, A, 40001, 8080),  # dialled an external address: not a Service
        flow(NODE_1, B, A, 40002, 8080),
    ]
    out = twins.flows(batch)
    assert out.tally.dedup_dropped == 1 and out.tally.records_out == 4
    joined = [orjson.loads(line) for line in next(iter(out.lines.values()))[:2]]
    for rec in joined:
        assert rec["source.process.pid"] == 21 and rec["destination.domain"] == "web.shop.svc"
    twins.flows(batch)


def test_names_needing_escapes() -> None:
    twins = Twins()
    observers = [ESCAPES, "n\u00f6de \u2603", 'a"b', "c\\d", "\x00", "\U0001f600", "x" * 253]
    twins.dns([dns(A, name, OUT4, 60, observer=name) for name in observers])
    twins.sockets([sock(name, "connect", A, 40000, OUT4, 443, 5, "ca") for name in observers])
    batch = [flow(name, A, OUT4, 40000, 443) for name in observers]
    batch += [flow(name, OUT4, A, 443, 40000) for name in observers]
    out = twins.flows(batch)
    assert out.tally.records_out == len(batch) and out.tally.dns_hits
    twins.flows(batch)


def test_local_mode() -> None:
    twins = Twins("local")
    twins.sockets([sock("host-a", "connect", HOST, 40000, OUT4, 443, 3),
                   sock("host-a", "accept", HOST6, 22, "::", 0, 4),
                   sock("host-a", "udp", "127.0.0.1", 53, "", 0, 5, proto=17)])  # fmt: skip
    twins.dns([dns(HOST, "example.com", OUT4, 60, "host-a")])
    batch = [flow("host-a", OUT4, HOST, 443, 40000), flow("host-a", OUT6, "FD00::1", 50000, 22),
             flow("host-a", "127.0.0.1", "127.0.0.1", 40000, 53, proto=17),
             flow("other", HOST, OUT4, 40000, 443)]  # fmt: skip
    out = twins.flows(batch)
    assert out.tally.lookups["host"] and out.tally.process_hits
    twins.flows(batch)


def test_a_resolver_without_an_identity_cache() -> None:
    twins = Twins("plain")
    twins.sockets([sock("host-a", "connect", HOST, 40000, OUT4, 443, 3)])
    batch = [flow("host-a", OUT4, HOST, 443, 40000), flow("host-a", HOST6, OUT6, 1, 2)]
    twins.flows(batch)
    out = twins.flows(batch)
    assert out.tally.lookups["host"] == 2 and b'"source.k8s.note":"x"' in lines_of(out)[0]


def test_a_lone_surrogate_fails_both_paths_alike() -> None:
    # orjson decodes none, but a record from elsewhere may carry one: the Python path
    # raises orjson's error when it renders the string; the C must fail alike.
    twins = Twins()
    twins.flows([GOOD])
    with pytest.raises(orjson.JSONEncodeError):
        twins.flows([flow("node-\ud800", A, B, 40000, 80)])
    twins.dns([dns(A, "\udfff.example", B, 60)])  # a name no record can carry: not learned
    assert b"domain" not in b"".join(lines_of(twins.flows([GOOD])))
    twins.dns([dns(A, "ok.example", B, 60)])
    assert b'"destination.domain":"ok.example"' in b"".join(lines_of(twins.flows([GOOD])))


def test_before_the_first_sync_and_after_changes_to_the_cluster() -> None:
    twins = Twins(ready=False)  # externals counted as unknown
    batch = [flow(NODE_1, A, OUT4, 40000, 443), flow(NODE_1, B, "198.51.100.1", 1, 2)]
    assert twins.flows(batch).tally.lookups["unknown"] == 2
    for w in twins.worlds:
        assert isinstance(w.resolver, Inventory)
        w.resolver.mark_synced("pods")
    twins.change(0)  # a pod at OUT4 now: the identity cache is dropped
    out = twins.flows(batch)
    assert out.tally.lookups["pod"] == 3 and out.tally.lookups["external"] == 1


def test_every_change_to_the_cluster_reaches_the_identities_the_core_keeps() -> None:
    # flow_body keeps each address's identity beside its address table while
    # resolver.generation holds: every change that drops a cached identity must show.
    pairs = ((A, B), (A6, B6), (AGENT, OUT4), (C, WEB), (OUT4, A), (B, "192.168.0.2"),
             (OUT6, A6), (B, WEB))  # fmt: skip
    batch = [flow(NODE_1, src, dst, 40000 + i, 80) for i, (src, dst) in enumerate(pairs)]
    changed = set()
    for n in range(len(CHANGES)):
        twins = Twins()
        twins.flows(batch)
        before = lines_of(twins.flows(batch))  # the identities kept by now
        twins.change(n)
        if lines_of(twins.flows(batch)) != before:
            changed.add(n)
    assert {0, 3, 5, 6, 7} <= changed  # pod at OUT4, labels, slice, owner, node (a deleted
    # Service stays resolvable for its grace period)
    twins = Twins()  # and all of them one after the other, on one state
    for n in range(len(CHANGES)):
        twins.flows(batch)
        twins.change(n)
    twins.flows(batch)


def test_addresses_taken_in_ahead_of_their_flows() -> None:
    twins = Twins()
    twins.learn([OUT4, SPELLINGS[A6][0], *BAD_ADDRESSES])  # and what warm() builds
    for w in twins.worlds:
        assert isinstance(w.resolver, Inventory)
        # every address a pod, service or node holds, its identity built, and taken in
        held = {*w.resolver._pod_ips, *w.resolver._service_ips, *w.resolver._node_ips}
        assert held == set(w.resolver._cache) and {A, B, WEB, AGENT} <= held
        assert held | {OUT4, SPELLINGS[A6][0]} == set(w.enricher._addresses)
    batch = [flow(NODE_1, A, B, 40000, 80), flow(NODE_1, SPELLINGS[A6][0], OUT6, 1, 443),
             flow(NODE_2, C, WEB, 40001, 80), flow(NODE_1, OUT4, AGENT, 2, 22)]  # fmt: skip
    out = twins.flows(batch)  # the same lines and counts as without (twins compares)
    assert out.tally.lookups == {**out.tally.lookups, "pod": 4, "service": 1, "external": 2}
    assert lines_of(twins.flows(batch)) == lines_of(out)
    twins.change(3)  # a label: the pod's identity goes cold, is built and taken in again
    twins.learn([])
    assert lines_of(twins.flows(batch)) != lines_of(out)


def test_any_iterable_of_records() -> None:
    twins = Twins()
    batch = [GOOD, flow(NODE_2, B, A, 80, 40000), None]
    for w in twins.worlds:
        w.enricher.flow_lines(batch)  # the addresses seen once
    outs = [w.enricher.flow_lines(iter(copy.deepcopy(batch))) for w in twins.worlds]
    assert outcome(outs[0]) == outcome(outs[1])
    outs = [w.enricher.flow_lines(tuple(copy.deepcopy(batch))) for w in twins.worlds]
    assert outcome(outs[0]) == outcome(outs[1])
    twins.same_state()


def test_the_caches_bounds_hit_in_the_middle_of_a_batch() -> None:
    twins = Twins(cid_cache=3)
    twins.flows([flow(NODE_1, A, B, 40000, port) for port in range(8)])
    for w in twins.worlds:  # one address short of the bound: the batch's second new one clears it
        addresses = w.enricher._addresses
        addresses.update((f"filler-{n}", (A, "ipv4", bytes(4)))
                         for n in range(enriching.MAX_ADDRESSES - len(addresses) - 1))  # fmt: skip
    batch = [flow(NODE_1, A, B, 40000, 80), flow(NODE_1, A, OUT4, 1, 2),
             flow(NODE_1, A, B, 40000, 81), flow(NODE_1, OUT4, "198.51.100.7", 1, 2),
             flow(NODE_1, A, B, 40000, 82), flow(NODE_1, A, OUT4, 1, 2)]  # fmt: skip
    batch += [flow(f"node-{n}", A, B, n, 80) for n in range(10)]  # new strings
    results = []
    for w in twins.worlds:
        strings = enriching._STRINGS  # shared: filled to one short of its bound per path
        strings.update((f"filler-{n}", b'"x"') for n in range(enriching.MAX_STRINGS))
        while len(strings) >= enriching.MAX_STRINGS:
            strings.popitem()
        results.append(outcome(w.enricher.flow_lines(copy.deepcopy(batch))))
    assert results[0] == results[1]
    twins.same_state()
    assert len(twins.python.enricher._addresses) < 10


# ---------------------------------------------------------------- generated cases


@dataclass(frozen=True, slots=True)
class Connection:
    """Two ends the generated records share, so socket and name lookups hit."""

    proto: int
    a: str
    a_port: int
    b: str
    b_port: int


@st.composite
def connection(draw: st.DrawFn) -> Connection:
    family = draw(st.sampled_from((V4, V6)))
    return Connection(
        draw(st.sampled_from(PROTOS)), draw(st.sampled_from(family)), draw(st.sampled_from(PORTS)),
        draw(st.sampled_from(family)), draw(st.sampled_from(PORTS)),
    )  # fmt: skip


def spelled(draw: st.DrawFn, address: str) -> str:
    """The address, sometimes in another spelling."""
    return draw(st.sampled_from((address, address, *SPELLINGS.get(address, ()))))


def ends(draw: st.DrawFn, conn: Connection) -> tuple[str, int, str, int]:
    """The connection's ends in either orientation."""
    if draw(st.booleans()):
        return conn.a, conn.a_port, conn.b, conn.b_port
    return conn.b, conn.b_port, conn.a, conn.a_port


counters = st.integers(0, 10**6) | st.sampled_from((2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64))
nanoseconds = st.integers(0, 2**63) | st.integers(-(2**64), 2**65)
# end times mostly around the socket events' (EVENT_NS), so observers are live or not
times = st.integers(EVENT_NS - 400 * 10**9, EVENT_NS + 400 * 10**9) | nanoseconds


@st.composite
def raw_flow(draw: st.DrawFn, conns: list[Connection]) -> Any:
    """A flow on one of the connections, with any optional keys, sometimes spoiled."""
    conn = draw(st.sampled_from(conns))
    src, sport, dst, dport = ends(draw, conn)
    record: dict[str, Any] = {
        "observer": draw(st.sampled_from(OBSERVERS)), "start_ns": draw(nanoseconds),
        "end_ns": draw(times), "end_reason": draw(st.sampled_from(END_REASONS)),
        "proto": conn.proto, "src": spelled(draw, src), "dst": spelled(draw, dst),
        "sport": sport, "dport": dport, "bytes": draw(counters), "packets": draw(counters),
        "rbytes": draw(counters), "rpackets": draw(counters),
    }  # fmt: skip
    optional = {
        "tcp_flags": st.integers(0, 255), "initiator": st.booleans(),
        "ifindex": st.integers(-1, 2**32), "vlan": st.integers(0, 4095),
        "nat_dst": st.sampled_from((WEB, WEB6, DNS, "web")), "nat_dport": st.sampled_from(PORTS),
    }  # fmt: skip
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=3)):
        if not key.startswith("nat") or draw(st.integers(0, 3)) == 0:
            record[key] = draw(optional[key])
    if draw(st.integers(0, 9)) == 0:  # spoiled: a key dropped or of a wrong type
        key = draw(st.sampled_from(sorted(record)))
        if draw(st.booleans()):
            del record[key]
        else:
            record[key] = draw(st.sampled_from((*JUNK, *BAD_ADDRESSES)))
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from((None, [], "flow", OrderedDict(record))))
    return record


@st.composite
def socket_event(draw: st.DrawFn, conns: list[Connection]) -> dict[str, Any]:
    """A socket event naming a connection's end, or a listener on it."""
    conn = draw(st.sampled_from(conns))
    local, lport, remote, rport = ends(draw, conn)
    if draw(st.integers(0, 3)) == 0:
        remote, rport = draw(st.sampled_from(("", "0.0.0.0", "::"))), 0
    return sock(
        draw(st.sampled_from(OBSERVERS)), draw(st.sampled_from(SOCKET_EVENTS)),
        spelled(draw, local), lport, spelled(draw, remote) if remote else remote, rport,
        draw(st.sampled_from(PIDS)),
        draw(st.sampled_from((*CONTAINERS_AT.get(local, ()), *CONTAINER_IDS))),
        conn.proto,
        draw(st.sampled_from(COMMS)),
    )  # fmt: skip


@st.composite
def dns_event(draw: st.DrawFn, conns: list[Connection]) -> dict[str, Any]:
    """A client on one end of a connection resolving the other end."""
    conn = draw(st.sampled_from(conns))
    client, _, address, _ = ends(draw, conn)
    return dns(
        spelled(draw, client), draw(st.sampled_from(QNAMES)), spelled(draw, address),
        draw(st.sampled_from(TTLS)), draw(st.sampled_from(OBSERVERS)),
    )  # fmt: skip


def steps(conns: list[Connection]) -> st.SearchStrategy[tuple[str, Any]]:
    flows = st.tuples(st.just("flows"), st.lists(raw_flow(conns), min_size=1, max_size=12))
    return st.one_of(
        flows,
        flows,
        st.tuples(st.just("sockets"), st.lists(socket_event(conns), min_size=1, max_size=6)),
        st.tuples(st.just("dns"), st.lists(dns_event(conns), min_size=1, max_size=4)),
        st.tuples(st.just("tick"), st.sampled_from(TICKS)),
        st.tuples(st.just("change"), st.integers(0, len(CHANGES) - 1)),
        st.tuples(st.just("learn"), st.lists(learned(conns), max_size=4)),
    )


def learned(conns: list[Connection]) -> st.SearchStrategy[str]:
    """An address the warming task may hand over: a connection's, in any spelling, or
    no address at all."""
    texts = [text for c in conns for a in (c.a, c.b) for text in (a, *SPELLINGS.get(a, ()))]
    return st.sampled_from((*texts, *BAD_ADDRESSES, "é"))


def play(twins: Twins, data: st.DataObject) -> None:
    """Connections first, then a run of steps on them, every flow batch twice (the second
    time the addresses are known and the Community IDs of open flows cached)."""
    conns = data.draw(st.lists(connection(), min_size=1, max_size=4))
    for kind, arg in data.draw(st.lists(steps(conns), min_size=1, max_size=10)):
        if kind == "flows":
            twins.attempt(arg)
            twins.attempt(arg)
        elif kind == "sockets":
            twins.sockets(arg)
        elif kind == "dns":
            twins.dns(arg)
        elif kind == "change":
            twins.change(arg)
        elif kind == "learn":
            twins.learn(arg)
        else:
            twins.tick(arg)


@pytest.mark.parametrize("mode", ["kubernetes", "local", "plain"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_sequence_of_batches_and_events(mode: str, data: st.DataObject) -> None:
    play(Twins(mode), data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ready=st.booleans())
def test_any_sequence_with_tiny_caches(data: st.DataObject, ready: bool) -> None:
    play(Twins(ready=ready, cid_cache=data.draw(st.sampled_from((0, 1, 2)))), data)


def test_many_observers_in_one_batch() -> None:
    """A raw batch mixing observers — more than the core's observer table holds, one too
    long for it, each first seen at some record of the batch — marks each seen when its
    first record is read, as the Python path does: a cross-node pair is merged only from
    the record on where both ends' nodes have reported."""
    twins = Twins()
    observers = [NODE_1, *(f"node-x{n}" for n in range(300)), "n" * 80, NODE_2]
    batch = []
    for n, observer in enumerate(observers * 2):
        batch.append(flow(observer, A, B, 40000 + n % 7, 8080))
        batch.append(flow(NODE_2 if n % 3 else NODE_1, B, A, 8080, 40000 + n % 7))
    out = twins.flows(batch)
    assert 0 < out.tally.records_out < len(batch)  # merged from NODE_2's first record on
    twins.tick(301)  # every observer inactive again
    twins.flows(list(reversed(batch)))


def test_names_kept_from_batch_to_batch() -> None:
    """flow_body keeps the entries it finds (flowcore.c, name ways) from one raw batch to
    the next: an entry learned again with another name, evicted, expired, and learned
    again after each, is read as the Python path reads the name cache then."""
    twins = Twins()  # NameCache(5, 60, 6): six entries at most

    def domains() -> set[str | None]:
        out = twins.flows([flow(NODE_1, A, OUT4, 40000 + i, 443) for i in range(12)])
        return {orjson.loads(line).get("destination.domain") for line in lines_of(out)}

    twins.dns([dns(A, "first.example", OUT4, 60)])
    assert domains() == {"first.example"}  # the addresses found
    assert domains() == {"first.example"}  # probed ahead: the entry kept
    twins.dns([dns(A, "second.example", OUT4, 60)])  # the same entry, in place
    assert domains() == {"second.example"}
    twins.dns([dns(B, f"n{n}.example", f"198.51.100.{n}", 60) for n in range(6)])
    assert domains() == {None}  # evicted: the kept entry is empty now
    twins.dns([dns(A, "third.example", OUT4, 60)])  # a new entry for the key
    assert domains() == {"third.example"}
    assert domains() == {"third.example"}
    twins.tick(61)
    assert domains() == {None}  # expired: the first record's lookup deletes it
    twins.dns([dns(A, "fourth.example", OUT4, 60)])
    assert domains() == {"fourth.example"}


def test_names_probed_ahead_of_their_records() -> None:
    """flow_body probes a record's DNS name a few records ahead of it. An entry that has
    expired by then is deleted by the first record that reads it, and the Python path (a
    NAT record) may run in between: the records after read the names as the Python path
    reads them."""
    twins = Twins()
    twins.dns([dns(A, "x.example", OUT4, 5), dns(B, "y.example", OUT4, 60)])
    same = [flow(NODE_1, A, OUT4, 40000 + i, 443) for i in range(8)]
    nat = flow(NODE_1, A, OUT4, 41000, 443, nat_dst=OUT4, nat_dport=443)
    batch = [*same[:4], nat, *same[4:], flow(NODE_1, B, OUT4, 42000, 443)]
    assert twins.flows(batch).tally.dns_hits == 10
    # Probed ahead from here on (the address is known to be answered).
    twins.tick(5.5)  # x.example's entry expired: deleted by the first record that reads it
    assert twins.flows(batch).tally.dns_hits == 1  # y.example's
    twins.dns([dns(A, "x.example", OUT4, 5)])
    twins.tick(5.5)
    assert twins.flows([nat, *batch]).tally.dns_hits == 1  # the Python path deletes it first
    # Both ends named (each asked for the other's name), both ways, one way reoriented
    # (the socket event says the destination connected): each end gets its own name.
    twins.dns([dns(A, "b.example", B, 60), dns(B, "a.example", A, 60)])
    twins.sockets([sock(NODE_1, "connect", B, 8080, A, 40100, 9)])
    pairs = [flow(NODE_1, A, B, 40100 + i, 8080) for i in range(4)]
    pairs += [flow(NODE_1, B, A, 8080, 40100), flow(NODE_1, A, B, 40100, 8080)]
    for _ in range(2):  # the first batch finds the addresses, the second probes ahead
        out = twins.flows(pairs * 2)
        assert out.tally.dns_hits == len(pairs) * 2
        names = {A: "a.example", B: "b.example"}
        records = [orjson.loads(line) for line in lines_of(out)]
        assert {r["source.address"] for r in records} == {A, B}
        for r in records:
            assert r["source.domain"] == names[r["source.address"]]
            assert r["destination.domain"] == names[r["destination.address"]]
