"""The record contract (DESIGN.md) as value types.

Raw events cross collector → enricher; enriched records cross enricher → exporter and
custom consumers. Each type converts to its wire form (a JSON-ready dict) in exactly one
method (``to_wire``) and back in exactly one (``from_wire``), which validates every key
and type and raises :class:`~flowscope.core.errors.RecordError`, never anything else.

Raw wire keys are short, documented in docs/records.md and versioned by schema name.
Enriched records use the flat dotted keys of DESIGN.md.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, ClassVar, TypeVar

from flowscope.core.errors import RecordError

END_REASONS = ("active_timeout", "idle_timeout", "end_of_flow_detected", "forced_end")
DIRECTIONS = ("forward", "unknown")
ENDPOINT_KINDS = ("pod", "service", "node", "host", "external")
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")  # bit 0 .. bit 7
SOCKET_EVENTS = ("connect", "accept", "udp", "close")

# IANA protocol numbers flowscope treats specially.
ICMP, TCP, UDP, ICMPV6, SCTP = 1, 6, 17, 58, 132
# ICMP request ↔ reply types, per protocol (Community ID v1's table): the collector keys
# both directions of an exchange as one flow by them, Community ID orders by them. Any
# other type is a one-way message.
ICMP_COUNTERPART = {
    ICMP: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17},
    ICMPV6: {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133,
             135: 136, 136: 135, 139: 140, 140: 139, 144: 145, 145: 144},
}  # fmt: skip

# IANA protocol numbers → lowercase keywords (network.transport): the registry's
# "Keyword" column (https://www.iana.org/assignments/protocol-numbers). Numbers it gives
# no keyword (61, 63, 68, 99, 114: "any ..."; 148-252 unassigned; 253-255) are absent.
TRANSPORTS = {
    0: "hopopt", 1: "icmp", 2: "igmp", 3: "ggp", 4: "ipv4", 5: "st", 6: "tcp", 7: "cbt",
    8: "egp", 9: "igp", 10: "bbn-rcc-mon", 11: "nvp-ii", 12: "pup", 13: "argus",
    14: "emcon", 15: "xnet", 16: "chaos", 17: "udp", 18: "mux", 19: "dcn-meas", 20: "hmp",
    21: "prm", 22: "xns-idp", 23: "trunk-1", 24: "trunk-2", 25: "leaf-1", 26: "leaf-2",
    27: "rdp", 28: "irtp", 29: "iso-tp4", 30: "netblt", 31: "mfe-nsp", 32: "merit-inp",
    33: "dccp", 34: "3pc", 35: "idpr", 36: "xtp", 37: "ddp", 38: "idpr-cmtp", 39: "tp++",
    40: "il", 41: "ipv6", 42: "sdrp", 43: "ipv6-route", 44: "ipv6-frag", 45: "idrp",
    46: "rsvp", 47: "gre", 48: "dsr", 49: "bna", 50: "esp", 51: "ah", 52: "i-nlsp",
    53: "swipe", 54: "narp", 55: "min-ipv4", 56: "tlsp", 57: "skip", 58: "ipv6-icmp",
    59: "ipv6-nonxt", 60: "ipv6-opts", 62: "cftp", 64: "sat-expak", 65: "kryptolan",
    66: "rvd", 67: "ippc", 69: "sat-mon", 70: "visa", 71: "ipcv", 72: "cpnx", 73: "cphb",
    74: "wsn", 75: "pvp", 76: "br-sat-mon", 77: "sun-nd", 78: "wb-mon", 79: "wb-expak",
    80: "iso-ip", 81: "vmtp", 82: "secure-vmtp", 83: "vines", 84: "iptm",
    85: "nsfnet-igp", 86: "dgp", 87: "tcf", 88: "eigrp", 89: "ospfigp", 90: "sprite-rpc",
    91: "larp", 92: "mtp", 93: "ax.25", 94: "ipip", 95: "micp", 96: "scc-sp",
    97: "etherip", 98: "encap", 100: "gmtp", 101: "ifmp", 102: "pnni", 103: "pim",
    104: "aris", 105: "scps", 106: "qnx", 107: "a/n", 108: "ipcomp", 109: "snp",
    110: "compaq-peer", 111: "ipx-in-ip", 112: "vrrp", 113: "pgm", 115: "l2tp", 116: "ddx",
    117: "iatp", 118: "stp", 119: "srp", 120: "uti", 121: "smp", 122: "sm", 123: "ptp",
    124: "isis over ipv4", 125: "fire", 126: "crtp", 127: "crudp", 128: "sscopmce",
    129: "iplt", 130: "sps", 131: "pipe", 132: "sctp", 133: "fc", 134: "rsvp-e2e-ignore",
    135: "mobility header", 136: "udplite", 137: "mpls-in-ip", 138: "manet", 139: "hip",
    140: "shim6", 141: "wesp", 142: "rohc", 143: "ethernet", 144: "aggfrag", 145: "nsh",
    146: "homa", 147: "bit-emu",
}  # fmt: skip


def transport_name(proto: int) -> str:
    """IANA keyword for an IP protocol number; unknown numbers as their decimal text."""
    return TRANSPORTS.get(proto, str(proto))


def tcp_flag_tags(bits: int) -> list[str]:
    """TCP flag bitmask (as in the TCP header's flags byte) → DESIGN.md tag list."""
    return [name for i, name in enumerate(TCP_FLAG_NAMES) if bits >> i & 1]


T = TypeVar("T")


def _check(schema: str, index: int, name: str, value: Any, hint: Any) -> Any:
    """Validate one wire value against a field's annotation (the types used here only)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
    if hint is int:
        ok = type(value) is int
    elif hint is float:
        ok = type(value) in (int, float)
    elif hint in (str, bool):
        ok = type(value) is hint
    elif origin is list:
        ok = isinstance(value, list)
    elif origin is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise RecordError(schema, index, f"{name} must be {hint}, got {type(value).__name__}")
    return value


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(name, type hint, required) per field; resolving hints is slow, so once per class."""
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            f.name,
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )


def _from_wire(cls: type[T], schema: str, data: Any, index: int) -> T:
    if not isinstance(data, Mapping):
        raise RecordError(schema, index, f"expected an object, got {type(data).__name__}")
    kwargs = {}
    for name, hint, required in _fields(cls):  # type: ignore[arg-type]
        if name in data:
            kwargs[name] = _check(schema, index, name, data[name], hint)
        elif required:
            raise RecordError(schema, index, f"missing key {name!r}")
    return cls(**kwargs)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """Field names of a dataclass, computed once (to_wire runs per record, 10k+/s)."""
    return tuple(name for name, _, _ in _fields(cls))


class _Wire:
    """Mixin: dataclass ↔ wire dict with identical key names."""

    SCHEMA: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _field_names(type(self))}  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls: type[T], data: Any, index: int = 0) -> T:
        return _from_wire(cls, cls.SCHEMA, data, index)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- raw (collector → enricher)


@dataclass(slots=True)
class RawFlow(_Wire):
    """Counters of one flow on one node for one interval, as the kernel aggregated them.

    ``src`` is the endpoint of the first packet seen (or the SYN sender); ``initiator``
    says whether that is known to be the connection's initiator (SYN without ACK seen from
    ``src``). Bytes are IP-level (IP header + payload). Times are unix nanoseconds.
    """

    SCHEMA: ClassVar[str] = "raw.flow"

    observer: str
    start_ns: int
    end_ns: int
    end_reason: str
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    bytes: int
    packets: int
    rbytes: int
    rpackets: int
    tcp_flags: int = 0
    initiator: bool = False
    ifindex: int = 0
    # Present only on a flow the collector found DNAT'ed in conntrack (docs/collector.md,
    # "NAT pairing"): the address and port the client sent to before the NAT (a Service
    # address); ``dst``/``dport`` are then the backend it reached.
    nat_dst: str | None = None
    nat_dport: int | None = None
    # Present only on a flow the collector found SNAT'ed in conntrack (a pod's connection
    # masqueraded on its way out): the address and port its source was translated to (the
    # node's); ``src``/``sport`` are then the pod's own.
    nat_src: str | None = None
    nat_sport: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The wire dict; the NAT keys only when set (optional keys of ``raw.flow/1``)."""
        wire = _Wire.to_wire(self)
        if self.nat_dst is None:
            del wire["nat_dst"], wire["nat_dport"]
        if self.nat_src is None:
            del wire["nat_src"], wire["nat_sport"]
        return wire


@dataclass(slots=True)
class RawSocket(_Wire):
    """A socket's owner, reported from process context.

    ``src``/``sport`` are the local end, ``dst``/``dport`` the remote end. ``pid`` is the
    process (thread-group) id, ``tid`` the thread id; ``comm`` the task name; ``cgroup_id``
    the cgroup v2 id and ``container_id`` its container (empty when not in one).
    ``netns`` is the network-namespace cookie (0 when unknown).
    """

    SCHEMA: ClassVar[str] = "raw.socket"

    observer: str
    time_ns: int
    event: str
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    pid: int
    tid: int
    comm: str
    cgroup_id: int = 0
    container_id: str = ""
    netns: int = 0


@dataclass(slots=True)
class DnsAnswer(_Wire):
    """One answer record: ``data`` is an address (A/AAAA) or a name (CNAME)."""

    SCHEMA: ClassVar[str] = "dns.answer"

    name: str
    type: str
    ttl: int
    data: str


@dataclass(slots=True)
class RawDns(_Wire):
    """One DNS exchange (query and, when seen, its response) captured on a node.

    ``latency_ns`` is 0 when no query was seen for the response (or vice versa).
    ``answers`` holds wire dicts of :class:`DnsAnswer`.
    """

    SCHEMA: ClassVar[str] = "raw.dns"

    observer: str
    time_ns: int
    id: int
    qname: str
    qtype: str
    rcode: str
    client: str
    client_port: int
    server: str
    server_port: int
    proto: int = 17
    latency_ns: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_wire(cls, data: Any, index: int = 0) -> RawDns:  # type: ignore[override]
        rec = _from_wire(cls, cls.SCHEMA, data, index)
        rec.answers = [DnsAnswer.from_wire(a, index).to_wire() for a in rec.answers]
        return rec


# ---------------------------------------------------------------- enriched (enricher → sinks)

# Keys every flow record has, with their JSON types (DESIGN.md "Always present").
FLOW_REQUIRED: dict[str, type] = {
    "flow.community_id": str,
    "flow.start_ns": int,
    "flow.end_ns": int,
    "flow.end_reason": str,
    "flow.direction": str,
    "network.type": str,
    "network.transport": str,
    "source.address": str,
    "destination.address": str,
    "source.port": int,
    "destination.port": int,
    "flow.bytes.delta": int,
    "flow.packets.delta": int,
    "flow.reverse.bytes.delta": int,
    "flow.reverse.packets.delta": int,
    "source.kind": str,
    "destination.kind": str,
    "observer.node.name": str,
}
# Keys a flow record may have (DESIGN.md "Present when known"), per endpoint, after
# the `source.` / `destination.` prefix.
ENDPOINT_OPTIONAL: dict[str, type] = {
    "k8s.namespace.name": str,
    "k8s.pod.name": str,
    "k8s.pod.uid": str,
    "k8s.container.name": str,
    "k8s.node.name": str,
    "k8s.workload.kind": str,
    "k8s.workload.name": str,
    "k8s.deployment.name": str,
    "k8s.replicaset.name": str,
    "k8s.statefulset.name": str,
    "k8s.daemonset.name": str,
    "k8s.job.name": str,
    "k8s.cronjob.name": str,
    "k8s.service.name": str,
    "process.pid": int,
    "process.executable.name": str,
    "container.id": str,
    "domain": str,
}
LABEL_PREFIX = "k8s.pod.labels."
FLOW_OPTIONAL: dict[str, type] = {"flow.tcp.flags.tags": list} | {
    f"{side}.{key}": t for side in ("source", "destination") for key, t in ENDPOINT_OPTIONAL.items()
}
OWNER_KEYS = {
    "Deployment": "k8s.deployment.name",
    "ReplicaSet": "k8s.replicaset.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}
DNS_REQUIRED: dict[str, type] = {
    "time_ns": int,
    "dns.id": int,
    "dns.question.name": str,
    "dns.question.type": str,
    "dns.response_code": str,
    "dns.answers": list,
    "dns.latency_ns": int,
    "source.address": str,
    "source.port": int,
    "destination.address": str,
    "destination.port": int,
    "source.kind": str,
    "destination.kind": str,
    "observer.node.name": str,
}


def is_contract_key(key: str, required: Mapping[str, type] = FLOW_REQUIRED) -> bool:
    """Whether ``key`` belongs to the record contract (required, optional or a label)."""
    if key in required or key in FLOW_OPTIONAL:
        return True
    side, _, rest = key.partition(".")
    return side in ("source", "destination") and rest.startswith(LABEL_PREFIX)


def _validate(schema: str, data: Any, index: int, required: Mapping[str, type]) -> dict:
    if not isinstance(data, dict):
        raise RecordError(schema, index, f"expected an object, got {type(data).__name__}")
    for key, t in required.items():
        value = data.get(key)
        if value is None:
            raise RecordError(schema, index, f"missing key {key!r}")
        if type(value) is not t:
            raise RecordError(schema, index, f"{key} must be {t.__name__}")
    for key, value in data.items():
        optional = FLOW_OPTIONAL.get(key)
        if optional is not None and type(value) is not optional:
            raise RecordError(schema, index, f"{key} must be {optional.__name__}")
    return data


class ShapeCheck:
    """``_validate`` for the record shapes seen before, in C.

    Records of one producer come in few shapes (the same keys in the same order). Per
    shape the keys to check — every required key, and the optional keys present — and
    their types are worked out once; a record then passes with one ``itemgetter``
    call and a comparison of the types of its values. A shape missing a required key,
    or a record with a wrong type (``None`` included), goes to ``_validate``, which
    raises the error it always raised.
    """

    LIMIT = 10_000  # shapes remembered; label keys are user data, so bounded

    def __init__(self, schema: str, required: Mapping[str, type]) -> None:
        self._schema = schema
        self._required = required
        self._shapes: dict[tuple[str, ...], tuple[Callable[[dict], Any], tuple[type, ...]]] = {}

    def __call__(self, data: Any, index: int = 0) -> dict[str, Any]:
        if type(data) is dict:
            shape = tuple(data)
            check = self._shapes.get(shape)
            if check is None and self._required.keys() <= data.keys():
                check = self._learn(shape)
            if check is not None and tuple(map(type, check[0](data))) == check[1]:
                return data
        return _validate(self._schema, data, index, self._required)

    def _learn(self, shape: tuple[str, ...]) -> tuple[Callable[[dict], Any], tuple[type, ...]]:
        # Pairs, not a dict: a key in both tables would be checked against both types.
        expected = list(self._required.items())
        expected += [(key, FLOW_OPTIONAL[key]) for key in shape if key in FLOW_OPTIONAL]
        keys, types = zip(*expected, strict=True)
        check = (itemgetter(*keys), types)  # ≥ 14 keys: itemgetter returns a tuple
        if len(self._shapes) >= self.LIMIT:
            self._shapes.clear()
        self._shapes[shape] = check
        return check


_check_flow = ShapeCheck("flow", FLOW_REQUIRED)
_check_dns = ShapeCheck("dns", DNS_REQUIRED)


@dataclass(slots=True)
class Endpoint:
    """One end of an enriched flow: address, port, kind, and what is known about it.

    ``meta`` holds the optional keys of :data:`ENDPOINT_OPTIONAL` (without prefix) and
    ``k8s.pod.labels.<key>`` entries.
    """

    address: str
    port: int
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_wire(self, side: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            f"{side}.address": self.address,
            f"{side}.port": self.port,
            f"{side}.kind": self.kind,
        }
        for key, value in self.meta.items():
            out[f"{side}.{key}"] = value
        return out

    @classmethod
    def from_wire(cls, side: str, data: Mapping[str, Any]) -> Endpoint:
        prefix = side + "."
        meta = {
            k[len(prefix) :]: v
            for k, v in data.items()
            if k.startswith(prefix) and k[len(prefix) :] not in ("address", "port", "kind")
        }
        return cls(data[f"{side}.address"], data[f"{side}.port"], data[f"{side}.kind"], meta)


@dataclass(slots=True)
class FlowRecord:
    """An enriched flow record (schema ``flow/1``), one per flow per reporting interval."""

    SCHEMA: ClassVar[str] = "flow"

    community_id: str
    start_ns: int
    end_ns: int
    end_reason: str
    direction: str
    network_type: str
    transport: str
    source: Endpoint
    destination: Endpoint
    bytes: int
    packets: int
    reverse_bytes: int
    reverse_packets: int
    observer_node: str
    tcp_flags: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "flow.community_id": self.community_id,
            "flow.start_ns": self.start_ns,
            "flow.end_ns": self.end_ns,
            "flow.end_reason": self.end_reason,
            "flow.direction": self.direction,
            "network.type": self.network_type,
            "network.transport": self.transport,
            "flow.bytes.delta": self.bytes,
            "flow.packets.delta": self.packets,
            "flow.reverse.bytes.delta": self.reverse_bytes,
            "flow.reverse.packets.delta": self.reverse_packets,
            "observer.node.name": self.observer_node,
        }
        if self.tcp_flags is not None:
            out["flow.tcp.flags.tags"] = self.tcp_flags
        out.update(self.source.to_wire("source"))
        out.update(self.destination.to_wire("destination"))
        return out

    @classmethod
    def from_wire(cls, data: Any, index: int = 0) -> FlowRecord:
        d = validate_flow(data, index)
        return cls(
            community_id=d["flow.community_id"],
            start_ns=d["flow.start_ns"],
            end_ns=d["flow.end_ns"],
            end_reason=d["flow.end_reason"],
            direction=d["flow.direction"],
            network_type=d["network.type"],
            transport=d["network.transport"],
            source=Endpoint.from_wire("source", d),
            destination=Endpoint.from_wire("destination", d),
            bytes=d["flow.bytes.delta"],
            packets=d["flow.packets.delta"],
            reverse_bytes=d["flow.reverse.bytes.delta"],
            reverse_packets=d["flow.reverse.packets.delta"],
            observer_node=d["observer.node.name"],
            tcp_flags=d.get("flow.tcp.flags.tags"),
        )


def validate_flow(data: Any, index: int = 0) -> dict[str, Any]:
    """Check a flow wire dict against the contract; returns it unchanged."""
    return _check_flow(data, index)


def validate_dns(data: Any, index: int = 0) -> dict[str, Any]:
    """Check a DNS wire dict against the contract; returns it unchanged."""
    return _check_dns(data, index)


@dataclass(slots=True)
class DnsRecord:
    """An enriched DNS record (schema ``dns/1``)."""

    SCHEMA: ClassVar[str] = "dns"

    time_ns: int
    id: int
    question_name: str
    question_type: str
    response_code: str
    answers: list[dict[str, Any]]
    latency_ns: int
    client: Endpoint
    server: Endpoint
    observer_node: str

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time_ns": self.time_ns,
            "dns.id": self.id,
            "dns.question.name": self.question_name,
            "dns.question.type": self.question_type,
            "dns.response_code": self.response_code,
            "dns.answers": self.answers,
            "dns.latency_ns": self.latency_ns,
            "observer.node.name": self.observer_node,
        }
        out.update(self.client.to_wire("source"))
        out.update(self.server.to_wire("destination"))
        return out

    @classmethod
    def from_wire(cls, data: Any, index: int = 0) -> DnsRecord:
        d = validate_dns(data, index)
        return cls(
            time_ns=d["time_ns"],
            id=d["dns.id"],
            question_name=d["dns.question.name"],
            question_type=d["dns.question.type"],
            response_code=d["dns.response_code"],
            answers=d["dns.answers"],
            latency_ns=d["dns.latency_ns"],
            client=Endpoint.from_wire("source", d),
            server=Endpoint.from_wire("destination", d),
            observer_node=d["observer.node.name"],
        )
