"""Socket owners from the kernel: which process is at each end of a connection.

:class:`SocketTracer` compiles ``bpf/sockets.c`` with bcc, attaches its programs to the
cgroup v2 root as BPF links (so they see every socket on the node, share the cgroup with
other programs, and vanish with this process however it ends), and turns the ring
buffer's :class:`~flowscope.collector.abi.SocketEvent` records into
:class:`~flowscope.core.records.RawSocket` events. Why these hooks, and how the pids are
kept honest, is explained in ``bpf/sockets.c`` and docs/collector-sockets.md.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import itertools
import logging
import mmap
import os
import resource
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import flowscope.bpf
import orjson
import prometheus_client
from flowscope.collector.abi import SOCK_CLOSE, SOCKET_EVENT, SOCKET_EVENT_NAMES, SocketEvent
from flowscope.collector.containers import ContainerResolver, find_cgroup2_root
from flowscope.collector.metrics import SocketTracerMetrics
from flowscope.collector.ring_reading import RingReader, record_stride, supported
from flowscope.core.errors import CodecError, StartupError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.records import TCP, UDP, RawSocket

log = logging.getLogger(__name__)

_T = TypeVar("_T")
PROC = Path("/proc")  # processes as the collector sees them (hostPID: the node's)
PROGRAM_PREFIX = "fs_so_"  # every program of bpf/sockets.c; recognisable in bpftool
RING_BUFFER = b"socket_events"
LOST_COUNTER = b"socket_lost"
AF_INET, AF_INET6 = 2, 10

# bcc program types (bcc.BPF constants) and kernel attach types (enum bpf_attach_type),
# spelled out so this table can be read without bcc at hand.
CGROUP_SKB, CGROUP_SOCK, SOCK_OPS, CGROUP_SOCK_ADDR = 8, 9, 13, 18


@dataclass(frozen=True, slots=True)
class Program:
    """One function of bpf/sockets.c and the cgroup hook it attaches to."""

    name: str
    prog_type: int
    attach_type: int


PROGRAMS = (
    Program("fs_so_create", CGROUP_SOCK, 2),  # BPF_CGROUP_INET_SOCK_CREATE
    Program("fs_so_release", CGROUP_SOCK, 34),  # BPF_CGROUP_INET_SOCK_RELEASE
    Program("fs_so_bind4", CGROUP_SOCK, 12),  # BPF_CGROUP_INET4_POST_BIND
    Program("fs_so_bind6", CGROUP_SOCK, 13),  # BPF_CGROUP_INET6_POST_BIND
    Program("fs_so_connect4", CGROUP_SOCK_ADDR, 10),  # BPF_CGROUP_INET4_CONNECT
    Program("fs_so_connect6", CGROUP_SOCK_ADDR, 11),  # BPF_CGROUP_INET6_CONNECT
    Program("fs_so_sendmsg4", CGROUP_SOCK_ADDR, 14),  # BPF_CGROUP_UDP4_SENDMSG
    Program("fs_so_sendmsg6", CGROUP_SOCK_ADDR, 15),  # BPF_CGROUP_UDP6_SENDMSG
    Program("fs_so_recvmsg4", CGROUP_SOCK_ADDR, 19),  # BPF_CGROUP_UDP4_RECVMSG
    Program("fs_so_recvmsg6", CGROUP_SOCK_ADDR, 20),  # BPF_CGROUP_UDP6_RECVMSG
    Program("fs_so_ops", SOCK_OPS, 3),  # BPF_CGROUP_SOCK_OPS
    Program("fs_so_egress", CGROUP_SKB, 1),  # BPF_CGROUP_INET_EGRESS
    Program("fs_so_ingress", CGROUP_SKB, 0),  # BPF_CGROUP_INET_INGRESS
)

# How the server side of a connection is named, best first (see bpf/sockets.c). The
# fexit modes are opt-in (``accept_hook=True``): fexit programs cannot be loaded on the
# development and CI machines (EPERM), so only their fallback is tested there.
ACCEPT_MODES = (
    ("fexit inet_csk_accept/2", ["-DFS_ACCEPT_HOOK=1", "-DFS_ACCEPT_ARGS=2"]),  # Linux >= 6.10
    ("fexit inet_csk_accept/4", ["-DFS_ACCEPT_HOOK=1", "-DFS_ACCEPT_ARGS=4"]),  # older
    ("listener owner at establishment", ["-DFS_ACCEPT_HOOK=0"]),  # no fexit
)

# The tracepoint that reports the close of connections the start-up snapshot found, and
# where bcc reads its format (it generates the context struct from it while compiling).
SNAPSHOT_TRACEPOINT = b"sock:inet_sock_set_state"
SNAPSHOT_PROGRAM = b"fs_so_snapshot_close"
SNAPSHOT_MAP = b"snapshot_closes"
TRACEFS_FORMATS = (
    Path("/sys/kernel/tracing/events/sock/inet_sock_set_state/format"),
    Path("/sys/kernel/debug/tracing/events/sock/inet_sock_set_state/format"),
)

# Type names clang reports for the ring buffer's struct (bcc's derivation) → size.
_C_SIZES = {
    "__u64": 8, "u64": 8, "__u32": 4, "u32": 4, "__u16": 2, "u16": 2,
    "__u8": 1, "u8": 1, "char": 1, "unsigned char": 1,
}  # fmt: skip


def bpf_source() -> Path:
    """bpf/sockets.c as installed (package data of ``flowscope.bpf``)."""
    return Path(flowscope.bpf.__file__).parent / "sockets.c"


# ---------------------------------------------------------------- decoding (pure)


# Field positions in an unpacked event (abi.SOCKET_EVENT, the order of struct fs_socket_event).
(E_TIME, E_COOKIE, E_CGROUP, E_NETNS, E_PID, E_TID, E_SADDR, E_DADDR,
 E_SPORT, E_DPORT, E_FAMILY, E_PROTO, E_EVENT, E_PAD, E_COMM) = range(15)  # fmt: skip
_V4_MAPPED = bytes(10) + b"\xff\xff"
_ZERO_96 = bytes(12)


def decode_event(raw: bytes) -> tuple[Any, ...]:
    """Ring-buffer bytes → the event's fields (a copy, safe after the callback returns).

    ``struct`` rather than ctypes: unpacking is several times faster than
    ``SocketEvent.from_buffer_copy`` plus attribute access, and the format is derived
    from the ctypes mirror (abi.SOCKET_EVENT), which stays the one declaration.
    """
    if len(raw) < SOCKET_EVENT.size:
        raise CodecError("short-socket-event", f"{len(raw)} bytes")
    return SOCKET_EVENT.unpack_from(raw)


def address_text(family: int, raw: bytes) -> str:
    """An address from the event in canonical text; IPv4-mapped IPv6 as IPv4 (that is
    what the packets on the wire carry).

    ``inet_ntop`` (~10x faster than :mod:`ipaddress`) writes the same RFC 5952 text
    except for ``::a.b.c.d`` (IPv4-compatible, deprecated) addresses, which it prints
    dotted; those keep :mod:`ipaddress`'s hex form, so the output is unchanged
    (property-tested against :mod:`ipaddress` in tests/unit/collector/test_socket_events.py).
    """
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == AF_INET6:
        prefix = raw[:12]
        if prefix == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        if prefix == _ZERO_96:
            return str(ipaddress.IPv6Address(raw[:16]))
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    raise CodecError("bad-socket-event", f"address family {family}")


# A node's sockets talk to few distinct addresses: remembering their text saves two
# conversions per event. lru_cache is bounded and does not cache the CodecError.
_address_text = functools.lru_cache(maxsize=16384)(address_text)


def socket_wire(
    event: tuple[Any, ...],
    observer: str,
    realtime_offset_ns: int,
    container_id: str,
    process_name: bytes | None = None,
) -> dict[str, Any]:
    """The one conversion from the kernel's struct to the raw socket record.

    Returns the ``raw.socket`` wire dict — exactly ``RawSocket.to_wire()``'s keys, order
    and types (property-tested) — because that is what gets published;
    :func:`to_raw_socket` gives the value object. ``process_name`` replaces the event's
    ``comm`` (the calling thread's name) with its process's name when the caller knows
    it (see :class:`ProcessNames`).
    """
    name = SOCKET_EVENT_NAMES.get(event[E_EVENT])
    if name is None:
        raise CodecError("bad-socket-event", f"event kind {event[E_EVENT]}")
    family = event[E_FAMILY]
    return {
        "observer": observer,
        "time_ns": event[E_TIME] + realtime_offset_ns,
        "event": name,
        "proto": event[E_PROTO],
        "src": _address_text(family, event[E_SADDR]),
        "sport": event[E_SPORT],
        "dst": _address_text(family, event[E_DADDR]),
        "dport": event[E_DPORT],
        "pid": event[E_PID],
        "tid": event[E_TID],
        # char[16] as ctypes reads it: up to the first NUL.
        "comm": (process_name or event[E_COMM])
        .split(b"\0", 1)[0]
        .decode("utf-8", errors="replace"),
        "cgroup_id": event[E_CGROUP],
        "container_id": container_id,
        "netns": event[E_NETNS],
    }


def socket_lines(
    events: list[tuple[Any, ...]],
    observer: str,
    realtime_offset_ns: int,
    container_ids: Callable[[Iterable[int]], dict[int, str]],
    process_name: Callable[[int], bytes | None] | None = None,
) -> tuple[list[bytes], list[tuple[Any, ...]]]:
    """Every event of one read as its ``raw.socket`` NDJSON line (newline included).

    Returns (lines, events :func:`socket_wire` would reject — an unknown kind or address
    family — for the caller to count). Byte for byte ``orjson.dumps(socket_wire(...)) +
    b"\\n"`` (property-tested), written out in one loop into one ``bytes`` template
    instead of a dict per event encoded afterwards: each cgroup is resolved once per
    read (:func:`_container_json`), each distinct ``comm`` and container id encoded once.
    ``process_name`` (pid → the process's name, None when not known) names the process
    of an event made by a thread other than the main one, whose ``comm`` is the thread's
    own name (``grpc-worker-3``); it is asked once per read and thread, and the ``comm``
    stays when it gives None. One flat loop on purpose: no function call per event or
    per thread (only its set-up is done in steps of its own).
    """
    containers = _container_json(events, container_ids)
    comms: dict[bytes, bytes] = {}
    # The line's end — the owner: pid, tid, comm, cgroup, container, netns — is the same
    # for all of one thread's events: written once per read and thread (one lookup
    # instead of two lookups and six fields formatted per event).
    owners: dict[tuple[int, int, bytes, int, int], bytes] = {}
    # Per family (equal bytes are different addresses): raw → JSON text, for this read.
    seen4: dict[bytes, bytes] = {}
    seen6: dict[bytes, bytes] = {}
    names, address = _EVENT_JSON, _address_json
    head = _socket_line_template(observer)
    out: list[bytes] = []
    odd: list[tuple[Any, ...]] = []
    append = out.append
    for event in events:
        (time_ns, _cookie, cgroup, netns, pid, tid, saddr, daddr,
         sport, dport, family, proto, kind, _pad, comm) = event  # fmt: skip
        name = names.get(kind)
        if name is None or (family != AF_INET and family != AF_INET6):
            odd.append(event)
            continue
        owner = owners.get((pid, tid, comm, cgroup, netns))
        if owner is None:
            task = comm
            if tid != pid and pid and process_name is not None:
                task = process_name(pid) or comm
            command = comms.get(task)
            if command is None:
                # char[16] as ctypes reads it: up to the first NUL.
                text = task.split(b"\0", 1)[0].decode("utf-8", errors="replace")
                command = comms[task] = orjson.dumps(text)
            owner = owners[pid, tid, comm, cgroup, netns] = _SOCKET_OWNER % (
                pid, tid, command, cgroup, containers[cgroup], netns,
            )  # fmt: skip
        seen = seen4 if family == AF_INET else seen6
        src = seen.get(saddr)
        if src is None:
            src = seen[saddr] = address(family, saddr)
        dst = seen.get(daddr)
        if dst is None:
            dst = seen[daddr] = address(family, daddr)
        append(head % (time_ns + realtime_offset_ns, name, proto, src, sport, dst, dport, owner))
    return out, odd


def _container_json(
    events: list[tuple[Any, ...]], container_ids: Callable[[Iterable[int]], dict[int, str]]
) -> dict[int, bytes]:
    """Cgroup id → container id as JSON text, for the events' cgroups: ``container_ids``
    maps the distinct ids (once per read) to container ids; id 0 is "" here."""
    cgroups = set(map(itemgetter(E_CGROUP), events))
    cgroups.discard(0)
    containers = {cgroup: orjson.dumps(c) for cgroup, c in container_ids(cgroups).items()}
    containers[0] = b'""'
    return containers


def _socket_line_template(observer: str) -> bytes:
    """:data:`_SOCKET_HEAD` behind the observer, which is the same in every line: part of
    the template (``%`` escaped)."""
    return b'{"observer":' + orjson.dumps(observer).replace(b"%", b"%%") + _SOCKET_HEAD


# socket_wire()'s dict as orjson writes it, plus the newline (key order: RawSocket's).
# A raw.socket line is b'{"observer":' + the observer's JSON + _SOCKET_HEAD % (...,
# _SOCKET_OWNER % (...)).
_SOCKET_HEAD = b',"time_ns":%d,"event":%b,"proto":%d,"src":%b,"sport":%d,"dst":%b,"dport":%d,%b'
_SOCKET_OWNER = b'"pid":%d,"tid":%d,"comm":%b,"cgroup_id":%d,"container_id":%b,"netns":%d}\n'

_EVENT_JSON = {kind: orjson.dumps(name) for kind, name in SOCKET_EVENT_NAMES.items()}


@functools.lru_cache(maxsize=16384)
def _address_json(family: int, raw: bytes) -> bytes:
    """:func:`address_text` as a JSON string (ASCII: nothing to escape), remembered."""
    return b'"%s"' % address_text(family, raw).encode()


# ---------------------------------------------------------------- process names

# Inode number of the initial PID namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
_INIT_PID_NS = 0xEFFFFFFC


class ProcessNames:
    """pid → its process's name: ``/proc/<pid>/comm``, the main thread's name (what
    OpenTelemetry's ``process.executable.name`` is on Linux), read once per process.

    The hooks can only name the calling thread (``bpf_get_current_comm``; the main
    thread's name is in ``task_struct``, which the BPF code does not read, DESIGN.md), and
    Java, Go and gRPC programs name their worker threads. At 50 000 events a second /proc
    cannot be read per event, nor per read and process: names are remembered, for at
    most ``size`` processes, the least recently used forgotten first.

    A remembered name must not outlive its process: the pid goes to whichever process
    the kernel gives it next, possibly in the same container (same cgroup and network
    namespace, so keying by those would not tell them apart), and a start time read to
    check would cost the /proc read a hit is there to save. So each entry holds a pidfd
    of its process, registered in an epoll set; a pidfd becomes readable when its
    process exits, and :meth:`forget_exited` drops those entries with one ``epoll_wait``.
    Called after the ring buffer's events were taken, it drops the entry of every process
    whose pid an event of the read could carry for a new process (the old one exited
    before the new one got the pid, so before its event). The cost: an fd per entry, so
    ``size`` is at most a quarter of the fd limit.

    Pids in the events are the initial PID namespace's; ``proc`` shows the namespace
    this process is in (the collector runs with hostPID). Anywhere else nothing is
    looked up: the events keep their threads' names. Nothing here raises on a process
    that exited or cannot be read: the caller keeps the thread's name (None).
    """

    def __init__(self, proc: Path = Path("/proc"), size: int = 4096) -> None:
        self.proc = proc
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.size = size if soft == resource.RLIM_INFINITY else max(1, min(size, soft // 4))
        self.enabled = _in_initial_pid_namespace(proc)
        self._names: OrderedDict[int, tuple[int, bytes]] = OrderedDict()  # pid → pidfd, name
        self._pids: dict[int, int] = {}  # pidfd → pid
        self._exits: select.epoll | None = None  # created with the first entry

    def __call__(self, pid: int) -> bytes | None:
        """The name of process ``pid`` (without the newline), or None if not known."""
        entry = self._names.get(pid)
        if entry is not None:
            self._names.move_to_end(pid)
            return entry[1]
        return self._read(pid) if self.enabled else None

    def forget_exited(self) -> None:
        """Drop the names of processes that exited since the last call."""
        while self._exits is not None and (ready := self._exits.poll(0)):
            for fd, _ in ready:
                self._forget(self._pids[fd])

    def close(self) -> None:
        """Forget everything and release the fds (the object may be used again)."""
        for pid in list(self._names):
            self._forget(pid)
        if self._exits is not None:
            self._exits.close()
            self._exits = None

    def _read(self, pid: int) -> bytes | None:
        # The pidfd first: the name read after it is its process's, or a later holder's
        # of the pid — then the pidfd is readable already and the next call forgets it.
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # exited already (ESRCH), or no pidfd_open (Linux < 5.3)
            return None
        except OverflowError:  # beyond pid_t: no process has it (a broken event)
            return None
        try:
            name = (self.proc / str(pid) / "comm").read_bytes().removesuffix(b"\n")
            if self._exits is None:
                self._exits = select.epoll()
            self._exits.register(pidfd, select.EPOLLIN)
        except OSError:  # exited meanwhile, or /proc refuses (hidepid)
            os.close(pidfd)
            return None
        if len(self._names) >= self.size:
            self._forget(next(iter(self._names)))
        self._names[pid] = (pidfd, name)
        self._pids[pidfd] = pid
        return name

    def _forget(self, pid: int) -> None:
        pidfd, _ = self._names.pop(pid)
        del self._pids[pidfd]
        if self._exits is not None:
            self._exits.unregister(pidfd)
        os.close(pidfd)


def _in_initial_pid_namespace(proc: Path) -> bool:
    """Whether ``proc`` shows this process in the initial PID namespace."""
    try:
        return os.stat(proc / "self" / "ns" / "pid").st_ino == _INIT_PID_NS
    except OSError:
        return False


def _decoded(lines: list[bytes]) -> list[dict[str, Any]]:
    """Lines of :func:`socket_lines` back as wire dicts (for callers that want them)."""
    return [orjson.loads(line) for line in lines]


def to_raw_socket(
    event: tuple[Any, ...], observer: str, realtime_offset_ns: int, container_id: str
) -> RawSocket:
    """A decoded event as the :class:`RawSocket` value object (via :func:`socket_wire`)."""
    return RawSocket(**socket_wire(event, observer, realtime_offset_ns, container_id))


def _mapped(address: str) -> bytes:
    """An address's 16 bytes as the state tracepoint gives them (IPv4 as IPv4-mapped)."""
    ip = ipaddress.ip_address(address)
    return (ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}")).packed


def realtime_offset_ns() -> int:
    """unix time minus CLOCK_MONOTONIC (bpf_ktime_get_ns's clock), sampled now."""
    return time.time_ns() - time.monotonic_ns()


def check_layout(fields: list[tuple[str, str]]) -> None:
    """Compare bcc's view of ``struct fs_socket_event`` with the Python mirror.

    ``fields`` are (name, C type) in declaration order as bcc derived them from the
    compiled program. A difference means abi.py and flowscope_abi.h disagree.
    """
    mirror = [(field[0], ctypes.sizeof(field[1])) for field in SocketEvent._fields_]
    derived = [(name, _c_size(ctype)) for name, ctype in fields]
    if derived != mirror:
        raise StartupError(
            "bpf-abi", f"struct fs_socket_event is {derived} in C but {mirror} in abi.py"
        )


def _c_size(ctype: str) -> int:
    base, _, count = ctype.partition("[")
    size = _C_SIZES.get(base.strip(), -1)
    return size * int(count.rstrip("]")) if count else size


# ---------------------------------------------------------------- socket lookups

NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_ERROR, NLM_F_REQUEST = 4, 20, 2, 1
SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux >= 5.14
CLONE_NEWNET = 0x40000000
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_DIAG_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its id: family, protocol, states
_DIAG_ID = struct.Struct("!HH16s16s")  # inet_diag_sockid: sport, dport (network order), src, dst
_DIAG_COOKIE = struct.Struct("=II")  # the id's cookie, low word first
_NO_COOKIE = b"\xff" * 8  # INET_DIAG_NOCOOKIE: look up by tuple only
# TCP states (include/net/tcp_states.h) of a socket with a peer and, usually, an fd: the
# ones the snapshot reports (socket_snapshotting) and in which SocketLookup finds one
# still there. TIME_WAIT and SYN_RECV entries are not full sockets (inode 0, no owner)
# and are left out (a connection that reached TIME_WAIT or CLOSE has had its close); a
# connection in SYN_SENT is reported because the hook's `connect` event at establishment
# would otherwise have no owner (connect() ran before the hooks).
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_LISTEN = 1, 2, 10
TCP_CONNECTED = frozenset({TCP_ESTABLISHED, TCP_SYN_SENT, 4, 5, 8, 9, 11})
# (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING: the connection still carries data)
UDP_CONNECTED = TCP_ESTABLISHED  # what connect() on a UDP socket sets sk_state to
_CONNECTED = {TCP: TCP_CONNECTED, UDP: frozenset({UDP_CONNECTED})}


class SocketLookup:
    """Exact socket lookups in one network namespace (``NETLINK_SOCK_DIAG``): is the
    socket of a snapshot record still there, and what is its cookie.

    The snapshot reads ``/proc`` text tables, which show neither cookies nor a socket
    that closed since; these one-socket queries are made for the snapshot's records
    only, once or twice each. A netlink socket answers for the namespace it was made in,
    so :meth:`in_namespace` makes it in a thread that joins the namespace and ends.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def in_namespace(cls, namespace: Path) -> SocketLookup:
        """A lookup in the network namespace at ``namespace`` (``/proc/<pid>/ns/net``).
        Raises OSError (entering it needs CAP_SYS_ADMIN)."""
        sock = in_network_namespace(
            namespace,
            lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG),
        )
        sock.settimeout(1.0)  # the kernel answers at once; never hang a start-up
        return cls(sock)

    def netns_cookie(self) -> int:
        """The namespace's cookie (what the hooks report as ``netns``)."""
        return netns_cookie_of(self._sock)

    def close(self) -> None:
        self._sock.close()

    def cookie(self, record: dict[str, Any]) -> int | None:
        """The cookie of the socket ``record`` (a snapshot ``raw.socket`` wire dict)
        names, None when it is no longer there with its peer. Raises OSError.

        An IPv4 tuple is asked as IPv4, then as IPv4-mapped IPv6 (a dual-stack UDP socket
        answers only the latter). The kernel may answer with another socket (a listener,
        a TIME_WAIT entry, a wildcard UDP socket on the port): only the exact tuple in a
        connected state counts.
        """
        proto, wanted = record["proto"], _tuple_of(record)
        for family, local, remote in _diag_forms(record["src"], record["dst"]):
            found = self._query(proto, family, local, record["sport"], remote, record["dport"])
            if found is None or found[1] not in _CONNECTED[proto]:
                continue
            lport, rport, src, dst = _DIAG_ID.unpack_from(found, 4)
            if (address_text(found[0], src), lport, address_text(found[0], dst), rport) == wanted:
                low, high = _DIAG_COOKIE.unpack_from(found, 4 + _DIAG_ID.size + 4)
                return low | high << 32
        return None

    def _query(
        self, proto: int, family: int, local: bytes, lport: int, remote: bytes, rport: int
    ) -> bytes | None:
        """One SOCK_DIAG_BY_FAMILY lookup: the reply's inet_diag_msg, None for ENOENT."""
        if proto == UDP:  # udp_diag reads the id as the packet's, not the socket's, ends
            local, lport, remote, rport = remote, rport, local, lport
        body = (
            _DIAG_REQUEST.pack(family, proto, 0, 0, 0xFFFFFFFF)
            + _DIAG_ID.pack(lport, rport, local, remote)
            + bytes(4)  # interface: any
            + _NO_COOKIE
        )
        self._seq += 1
        header = _NLMSG.pack(
            _NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._seq, 0
        )
        self._sock.send(header + body)
        reply = self._sock.recv(8192)
        while _NLMSG.unpack_from(reply)[3] != self._seq:  # a late answer to a timed-out one
            reply = self._sock.recv(8192)
        if _NLMSG.unpack_from(reply)[1] == NLMSG_ERROR:
            code = -int.from_bytes(reply[16:20], sys.byteorder, signed=True)
            if code == errno.ENOENT:
                return None
            raise OSError(code, f"sock_diag: {os.strerror(code)}")
        return reply[_NLMSG.size :]


def _tuple_of(record: dict[str, Any]) -> tuple[str, int, str, int]:
    return record["src"], record["sport"], record["dst"], record["dport"]


def _diag_forms(src: str, dst: str) -> list[tuple[int, bytes, bytes]]:
    """(family, local, remote) as sock_diag takes them (16-byte fields)."""
    if ":" in src:
        return [(AF_INET6, socket.inet_pton(socket.AF_INET6, src),
                 socket.inet_pton(socket.AF_INET6, dst))]  # fmt: skip
    return [(AF_INET, socket.inet_pton(socket.AF_INET, src) + _ZERO_96,
             socket.inet_pton(socket.AF_INET, dst) + _ZERO_96),
            (AF_INET6, _mapped(src), _mapped(dst))]  # fmt: skip


def in_network_namespace(namespace: Path, make: Callable[[], _T]) -> _T:
    """What ``make()`` returns when run in the network namespace at ``namespace`` (a
    ``/proc/<pid>/ns/net`` file): a socket it makes keeps that namespace. Raises OSError
    (``setns`` needs CAP_SYS_ADMIN; the process may have exited).

    ``setns`` moves only the calling thread, so ``make`` runs in a thread of its own that
    ends right after: the event loop's threads never change namespace.
    """
    made: list[_T | OSError] = []

    def inside() -> None:
        try:
            fd = os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {namespace}: {os.strerror(code)}")
            finally:
                os.close(fd)
            made.append(make())
        except OSError as error:
            made.append(error)

    thread = threading.Thread(target=inside, name="in-netns")
    thread.start()
    thread.join()
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def netns_cookie_of(sock: socket.socket) -> int:
    """The cookie of the network namespace ``sock`` was made in, as the BPF hooks report
    it (Linux >= 5.14). Raises OSError."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, sys.byteorder)  # a __u64 in host order


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def snapshot_close(record: dict[str, Any], now_ns: int = 0) -> SocketEvent:
    """The ``close`` of a socket a snapshot record names, with the record's owner: for
    TCP its 4-tuple (IPv4-mapped, as the tracepoint keys it), for UDP its local end and
    an unspecified remote (what fs_so_release sends). ``tid`` 0, as the record's."""
    event = SocketEvent()
    event.time_ns = now_ns
    event.proto, event.event = record["proto"], SOCK_CLOSE
    event.sport = record["sport"]
    if record["proto"] == TCP:
        event.family = AF_INET6
        ctypes.memmove(event.saddr, _mapped(record["src"]), 16)
        ctypes.memmove(event.daddr, _mapped(record["dst"]), 16)
        event.dport = record["dport"]
    else:
        family, local, _ = _diag_forms(record["src"], record["dst"])[0]
        event.family = family
        ctypes.memmove(event.saddr, local, 16)
    event.pid, event.cgroup_id, event.netns = record["pid"], record["cgroup_id"], record["netns"]
    event.comm = record["comm"].encode()[:15]
    return event


BPF_NOEXIST = 1  # bpf_map_update_elem flag: only if the key is not there


def _lookup_for(netns: int, records: list[dict[str, Any]]) -> SocketLookup | None:
    """A lookup in the namespace whose cookie is ``netns``, entered through one of the
    records' processes or, when none is still in it (a connection often closes because
    its process exited), any process in it; checked by cookie (a pid may be reused, and
    a process may hold a socket of another namespace). None if none is found, and for
    cookie 0 (unknown: a kernel before 5.14), which nothing can be checked against."""
    if not netns:
        return None
    owners = sorted({record["pid"] for record in records})
    tried: set[int] = set()
    for pid in itertools.chain(owners, _every_process()):
        path = PROC / str(pid) / "ns" / "net"
        try:
            inode = os.stat(path).st_ino
            if inode in tried:
                continue
            tried.add(inode)
            lookup = SocketLookup.in_namespace(path)
        except OSError:
            continue
        try:
            if lookup.netns_cookie() == netns:
                return lookup
        except OSError:
            pass
        lookup.close()
    return None


def process_ids(proc: Path) -> list[int]:
    """Every process (thread-group) id under ``proc``, ascending."""
    return sorted(int(name) for name in os.listdir(proc) if name.isdigit())


def _every_process() -> Iterator[int]:
    """process_ids(PROC), with /proc listed only when the first is asked for."""
    yield from process_ids(PROC)


def _cookie(lookup: SocketLookup, record: dict[str, Any]) -> int | None:
    """The socket's cookie; None: gone; -1: the lookup failed."""
    try:
        return lookup.cookie(record)
    except OSError:
        return -1


def _gone(lookup: SocketLookup, record: dict[str, Any], cookie: int | None) -> bool:
    """Whether the socket (with ``cookie``, if known) is no longer there; a failed
    lookup does not say so."""
    found = _cookie(lookup, record)
    return found is None or (cookie is not None and found not in (cookie, -1))


def _deleted(table: Any, key: Any) -> bool:
    """Delete ``key``; whether it was there (the kernel may have deleted it first)."""
    try:
        del table[key]
    except KeyError:
        return False
    return True


# ---------------------------------------------------------------- the tracer


class SocketTracer:
    """Loads and attaches the socket-owner programs; yields :class:`RawSocket` events.

    ``observer`` is the node name put on every event; ``containers`` resolves cgroup ids;
    ``registry`` receives the metrics (:class:`SocketTracerMetrics`); ``cgroup_path`` is
    where the cgroup2 filesystem is (on a hybrid v1+v2 host, its ``unified`` child is
    used). ``accept_hook`` asks for the accepting process (fexit on inet_csk_accept)
    rather than the listening port's binder as the server side, where the kernel allows
    it (see :data:`ACCEPT_MODES`).
    """

    def __init__(
        self,
        observer: str,
        containers: ContainerResolver,
        registry: prometheus_client.CollectorRegistry,
        cgroup_path: str = "/sys/fs/cgroup",
        *,
        ringbuf_pages: int = 512,
        owners_max: int = 65536,
        accept_hook: bool = False,
        snapshot_max: int = 0,
    ) -> None:
        self.observer = observer
        self.containers = containers
        self.cgroup_path = cgroup_path
        self.ringbuf_pages = ringbuf_pages
        self.owners_max = owners_max
        self.accept_hook = accept_hook
        self.snapshot_max = snapshot_max  # 0: no start-up snapshot, no closes for it
        self.snapshot_closes = False  # whether open() attached the tracepoint
        self._snapshot_compiled = False
        self.program_ids: list[int] = []
        self.accept_mode = ""  # which of ACCEPT_MODES open() could use
        self._bpf: Any = None
        self._cgroup_fd = -1
        self._links: list[int] = []
        self._raw: list[bytes] = []  # bcc callback path: copied records
        # closes sent from user space (watch_closes, in a worker thread): read first
        self._late: deque[tuple[Any, ...]] = deque()
        self._ring: RingReader | None = None  # mmap path (x86): see ring_reading
        self._ring_poll: select.poll | None = None
        self._lost_seen = 0
        self._offset_ns = realtime_offset_ns()
        self._bad_log = RateLimitedLog(log)
        self._metrics = SocketTracerMetrics.create(registry)
        self._process_names = ProcessNames()

    def open(self) -> None:
        """Compile, check the ABI, attach every program. Raises StartupError.

        May be called again after :meth:`close`.
        """
        self.program_ids = []
        try:
            self._cgroup_fd = self._open_cgroup()
            self._bpf = self._compile()
            check_layout(self._derived_fields())
            self._attach_all()
            self._attach_snapshot_closes()
            self._open_ring()
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: int) -> list[RawSocket]:
        """Wait up to ``timeout_ms`` for events; returns those read (possibly none)."""
        return [RawSocket.from_wire(wire) for wire in self.poll_wire(timeout_ms)]

    def poll_wire(self, timeout_ms: int) -> list[dict[str, Any]]:
        """As :meth:`poll`, as ``raw.socket`` wire dicts (what the collector publishes)."""
        if self._bpf is None:
            raise RuntimeError("SocketTracer.poll() before open()")
        self._wait(timeout_ms)
        return _decoded(self._take())

    @property
    def capacity(self) -> int:
        """Events the ring buffer holds when full."""
        return self.ringbuf_pages * mmap.PAGESIZE // record_stride(SOCKET_EVENT.size)

    def fileno(self) -> int:
        """The ring buffer's fd: readable (epoll) while events wait to be read."""
        if self._bpf is None:
            raise RuntimeError("SocketTracer.fileno() before open()")
        return int(self._bpf[RING_BUFFER].map_fd)

    def _wait(self, timeout_ms: int) -> None:
        """Until events are there or ``timeout_ms`` passed (bcc path: reads them too)."""
        if self._late:
            timeout_ms = 0
        if self._ring_poll is None:
            self._bpf.ring_buffer_poll(timeout_ms)
        elif timeout_ms and self._ring is not None and not self._ring.available():
            self._ring_poll.poll(timeout_ms)

    def read_lines(self) -> list[bytes]:
        """The events waiting now as ``raw.socket`` NDJSON lines, without blocking (for
        an event loop that waits on :meth:`fileno`; what the collector publishes)."""
        if self._bpf is None:
            raise RuntimeError("SocketTracer.read_lines() before open()")
        if self._ring is None:
            self._bpf.ring_buffer_consume()
        return self._take()

    def _take(self) -> list[bytes]:
        """Read (mmap path) or take what the callback copied (bcc path); convert, count."""
        if self._ring is not None:
            skipped = self._ring.skipped
            events = self._ring.read()
            if self._ring.skipped > skipped:  # not a struct fs_socket_event: a bug
                self._metrics.bad.inc(self._ring.skipped - skipped)
        else:
            raw, self._raw = self._raw, []
            events = [event for data in raw if (event := self._decode(data)) is not None]
        if self._late:  # popleft: watch_closes may append meanwhile
            events[:0] = [self._late.popleft() for _ in range(len(self._late))]
        self._offset_ns = realtime_offset_ns()  # follows clock steps (NTP) between polls
        self._count_lost()
        self._process_names.forget_exited()  # after taking the events: see ProcessNames
        lines, odd = socket_lines(
            events,
            self.observer,
            self._offset_ns,
            self.containers.container_ids,
            self._process_names,
        )
        kinds = Counter(map(itemgetter(E_EVENT), events))
        for event in odd:  # socket_wire names what is wrong with it
            self._convert(event)
            kinds[event[E_EVENT]] -= 1
        # One metric update per kind and poll, not per event (labels() + inc() cost ~1 µs).
        for kind, n in kinds.items():
            if n:
                self._metrics.events.labels(SOCKET_EVENT_NAMES[kind]).inc(n)
        return lines

    def close(self) -> None:
        """Detach everything this tracer attached and unload its programs (idempotent)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            self._ring_poll = None
        for fd in self._links:
            os.close(fd)  # closing a link's last fd detaches it
        self._links = []
        self._metrics.programs_attached.set(0)
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1
        self._process_names.close()

    # ------------------------------------------------------------ open() steps

    def _open_cgroup(self) -> int:
        root = find_cgroup2_root(self.cgroup_path)
        try:
            return os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise StartupError("cgroup2", f"cannot open {root}: {error}") from error

    def _compile(self) -> Any:
        """Compile and load; the accept hook in the first form this kernel takes."""
        try:
            from bcc import BPF
        except ImportError as error:
            raise StartupError("bcc", "python3-bpfcc is not importable") from error
        source = bpf_source()
        cflags = [
            f"-I{source.parent}",
            f"-DFS_RINGBUF_PAGES={self.ringbuf_pages}",
            f"-DFS_OWNERS_MAX={self.owners_max}",
        ]
        if self.snapshot_max and any(path.exists() for path in TRACEFS_FORMATS):
            cflags += ["-DFS_SNAPSHOT_CLOSES=1", f"-DFS_SNAPSHOT_MAX={self.snapshot_max}"]
            self._snapshot_compiled = True
        elif self.snapshot_max:
            log.warning(
                "no tracefs format for %s: connections found by the socket snapshot get no "
                "close event (their processes are forgotten by LRU eviction)",
                SNAPSHOT_TRACEPOINT.decode(),
            )
        problems = []
        modes = ACCEPT_MODES if self.accept_hook else ACCEPT_MODES[-1:]
        for mode, flags in modes:
            try:
                # bcc loads and attaches the kretfunc program while constructing.
                bpf = BPF(src_file=str(source).encode(), cflags=cflags + flags)
            except Exception as error:  # bcc raises bare Exception for compile/load failures
                problems.append(f"{mode}: {error}")
                continue
            self.accept_mode = mode
            if problems:
                log.warning("accept() owners: falling back to %s (%s)", mode, "; ".join(problems))
            return bpf
        raise StartupError("bpf-compile", f"{source}: {'; '.join(problems)}")

    def _derived_fields(self) -> list[tuple[str, str]]:
        from bcc.libbcc import lib

        module, name = self._bpf.module, RING_BUFFER
        count = lib.bpf_perf_event_fields(module, name)
        pairs = [lib.bpf_perf_event_field(module, name, i).decode() for i in range(count)]
        return [tuple(pair.split("#", 1)) for pair in pairs]  # type: ignore[misc]

    def _attach_all(self) -> None:
        from flowscope.collector import cgroup_links

        left = sum(
            cgroup_links.detach_by_name(self._cgroup_fd, p.attach_type, PROGRAM_PREFIX)
            for p in PROGRAMS
        )
        if left:
            log.warning("removed %d socket-owner programs an earlier run left attached", left)
        for program in PROGRAMS:
            fd = self._load(program)
            self.program_ids.append(cgroup_links.prog_info(fd).id)
            try:
                self._links.append(
                    cgroup_links.link_create(fd, self._cgroup_fd, program.attach_type)
                )
            except OSError as error:
                raise StartupError(
                    "bpf-attach", f"{program.name} to the cgroup v2 root: {error}"
                ) from error
            self._metrics.programs_attached.inc()

    def _attach_snapshot_closes(self) -> None:
        """Attach the snapshot connections' close tracepoint; without it (an older
        kernel, a refused perf event) those connections get no close: logged, not fatal."""
        if not self._snapshot_compiled:
            return
        try:
            self._bpf.attach_tracepoint(tp=SNAPSHOT_TRACEPOINT, fn_name=SNAPSHOT_PROGRAM)
        except Exception as error:  # bcc raises bare Exception for load/attach failures
            log.warning(
                "%s not attached (%s): connections found by the socket snapshot get no "
                "close event (their processes are forgotten by LRU eviction)",
                SNAPSHOT_TRACEPOINT.decode(),
                error,
            )
            return
        self.snapshot_closes = True

    def watch_closes(self, records: Iterable[dict[str, Any]]) -> int:
        """Have the kernel send a ``close`` for each connection of the snapshot's
        ``records`` (raw.socket wire dicts) when it ends; returns how many it watches.

        A TCP connection's close is prepared under its 4-tuple in ``snapshot_closes``
        (the state tracepoint sends it). A connected UDP socket is found by its tuple
        (:class:`SocketLookup`) for its cookie, under which its owner and local end go
        into ``owners`` and ``udp_locals``: fs_so_release then closes it as a socket the
        hooks reported. Each socket is then looked up again: one that closed since the
        snapshot read it, before its entry was written, had nothing to send its close;
        its entry is removed and its close read with the next events (unless the kernel
        removed the entry first and sent the close itself). Sockets of a namespace that
        cannot be looked up (no CAP_SYS_ADMIN, no process left in it) keep their TCP
        entries unchecked and their UDP ones are not watched (logged once).
        """
        if self._bpf is None:
            raise RuntimeError("SocketTracer.watch_closes() before open()")
        wanted = [
            r for r in records if r["proto"] == UDP or (r["proto"] == TCP and self.snapshot_closes)
        ]
        groups: dict[int, list[dict[str, Any]]] = {}
        for record in wanted:
            groups.setdefault(record["netns"], []).append(record)
        watched, unchecked = 0, 0
        for netns, group in groups.items():
            lookup = _lookup_for(netns, group)
            unchecked += len(group) if lookup is None else 0
            try:
                watched += sum(self._watch(record, lookup) for record in group)
            finally:
                if lookup is not None:
                    lookup.close()
        if unchecked:
            log.warning(
                "%d sockets of the snapshot could not be looked up (their network namespace "
                "could not be entered): closed ones may get no close event",
                unchecked,
            )
        return watched

    def _watch(self, record: dict[str, Any], lookup: SocketLookup | None) -> int:
        """Watch one record's socket (see :meth:`watch_closes`); 1 if watched, else 0."""
        if record["proto"] == TCP:
            table = self._bpf[SNAPSHOT_MAP]
            key = table.Key()
            ctypes.memmove(key.saddr, _mapped(record["src"]), 16)
            ctypes.memmove(key.daddr, _mapped(record["dst"]), 16)
            key.sport, key.dport = record["sport"], record["dport"]
            table[key] = table.Leaf.from_buffer_copy(snapshot_close(record))
            if lookup is not None and _gone(lookup, record, None) and _deleted(table, key):
                self._send_late(record)
            return 1
        if lookup is None:
            return 0
        cookie = _cookie(lookup, record)
        if cookie is None:  # closed before it could be watched
            self._send_late(record)
            return 0
        if cookie < 0:  # the lookup failed: as before, no close
            return 0
        self._watch_udp(cookie, record)
        if _gone(lookup, record, cookie) and _deleted(self._bpf[b"udp_locals"], cookie):
            _deleted(self._bpf[b"owners"], cookie)
            self._send_late(record)
        return 1

    def _watch_udp(self, cookie: int, record: dict[str, Any]) -> None:
        """The socket's owner and local end under its cookie, unless the hooks put them
        there first (a datagram since start-up: theirs are as good, and newer)."""
        from bcc.libbcc import lib

        owners, locals_ = self._bpf[b"owners"], self._bpf[b"udp_locals"]
        owner = owners.Leaf()
        owner.pid, owner.cgroup_id, owner.netns = (
            record["pid"],
            record["cgroup_id"],
            record["netns"],
        )
        owner.comm = record["comm"].encode()[:15]
        close = snapshot_close(record)
        local = locals_.Leaf()
        ctypes.memmove(local.addr, close.saddr, 16)
        local.port, local.family = close.sport, close.family
        for table, leaf in ((owners, owner), (locals_, local)):
            key = table.Key(cookie)
            lib.bpf_update_elem(table.map_fd, ctypes.byref(key), ctypes.byref(leaf), BPF_NOEXIST)

    def _send_late(self, record: dict[str, Any]) -> None:
        """Queue the record's close for the next read (bpf_ktime_get_ns's clock)."""
        self._late.append(decode_event(bytes(snapshot_close(record, time.monotonic_ns()))))

    def _load(self, program: Program) -> int:
        try:
            fn = self._bpf.load_func(
                program.name.encode(), program.prog_type, attach_type=program.attach_type
            )
        except Exception as error:  # verifier rejection; bcc prints the log to stderr
            raise StartupError("bpf-load", f"{program.name}: {error}") from error
        return int(fn.fd)

    # ------------------------------------------------------------ events

    def _open_ring(self) -> None:
        """Read the ring buffer from its mapped pages where that is correct (x86), else
        through bcc's per-event callback."""
        table = self._bpf[RING_BUFFER]
        if supported():
            self._ring = RingReader(int(table.map_fd), int(table.max_entries), SOCKET_EVENT)
            self._ring_poll = select.poll()
            self._ring_poll.register(self._ring.fd, select.POLLIN)
        else:
            table.open_ring_buffer(self._on_event)

    def _on_event(self, _ctx: object, data: int, size: int) -> None:
        # The pointer is valid only during this callback: copy the bytes now.
        self._raw.append(ctypes.string_at(data, size))

    def _decode(self, data: bytes) -> tuple[Any, ...] | None:
        try:
            return decode_event(data)
        except CodecError as error:
            self._skip(error)
            return None

    def _skip(self, error: CodecError) -> None:
        self._metrics.bad.inc()
        self._bad_log.warning(error.reason, f"socket event skipped: {error}")

    def _convert(self, event: tuple[Any, ...]) -> dict[str, Any] | None:
        try:
            cgroup_id = event[E_CGROUP]
            container = self.containers.container_id(cgroup_id) if cgroup_id else ""
            return socket_wire(event, self.observer, self._offset_ns, container)
        except CodecError as error:
            self._skip(error)
            return None

    def _count_lost(self) -> None:
        total = sum(self._bpf[LOST_COUNTER][ctypes.c_int(0)])
        if total > self._lost_seen:
            self._metrics.lost.inc(total - self._lost_seen)
            self._lost_seen = total
