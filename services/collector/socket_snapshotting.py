"""Socket owners of connections that existed before the collector started.

The BPF socket hooks (:mod:`flowscope.collector.socket_tracing`) report a connection when
it is established; one established before the programs were attached is never reported,
so after a collector restart every long-lived connection (database pools, gRPC channels)
would lose its process until it reconnects. :class:`SocketSnapshot` reports them once at
start-up, after the hooks are attached, as ordinary ``raw.socket`` records:

1. group the node's processes by network namespace (``/proc/<pid>/ns/net`` inode);
2. per namespace, read the TCP and UDP tables of one of its processes
   (``/proc/<pid>/net/{tcp,tcp6,udp,udp6}``: no ``setns`` needed, the kernel shows the
   tables of that process's namespace) — connected sockets and TCP listeners — and the
   namespace's cookie, both through that process's open ``/proc/<pid>`` directory and
   namespace, so that neither comes from another namespace when the process exits or its
   pid is reused meanwhile;
3. find each socket's owner: the lowest pid with an fd that is ``socket:[<inode>]``
   (``/proc/<pid>/fd``; needs CAP_SYS_PTRACE for other users' processes);
4. the owner's ``comm``, and its cgroup v2 id from one walk of the cgroup tree reading
   every ``cgroup.procs`` (works whatever cgroup namespace the collector is in).

A TCP socket whose local (address, port) matches a listener of its namespace (or a
wildcard listener on that port) is ``accept``, any other ``connect``; a connected UDP
socket is ``udp``. Why text tables rather than sock_diag, and the limits, are in
docs/collector-sockets.md.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowscope.collector.checks import CAP_SYS_PTRACE, effective_capabilities
from flowscope.collector.containers import container_id_from_path, find_cgroup2_root, walk_cgroups
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_tracing import (
    AF_INET,
    AF_INET6,
    TCP_CONNECTED,
    TCP_LISTEN,
    UDP_CONNECTED,
    address_text,
    in_network_namespace,
    netns_cookie_of,
    process_ids,
)
from flowscope.core.errors import CodecError, StartupError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.records import TCP, UDP

log = logging.getLogger(__name__)

# (file under /proc/<pid>/net, address family, IP protocol)
TABLES = (("tcp", AF_INET, TCP), ("tcp6", AF_INET6, TCP), ("udp", AF_INET, UDP),
          ("udp6", AF_INET6, UDP))  # fmt: skip

WILDCARDS = ("0.0.0.0", "::")

# A line of /proc/net/{tcp,udp}{,6} after split(): sl, local, remote, st, tx:rx, tr:when,
# retrnsmt, uid, timeout, inode, ... (tcp and udp agree up to the inode).
_MIN_FIELDS = 10
_ADDRESS_HEX = {AF_INET: 8, AF_INET6: 32}
# errors reasons: processes whose fd directory could not be listed / whose fds not read
FD_LIST_DENIED, FD_READ_DENIED = "fd_list_denied", "fd_read_denied"
_CONSEQUENCE = "their connections that existed before the collector started are not reported"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class SnapshotParseError(CodecError):
    """A line of a /proc/net socket table that does not have the kernel's layout."""

    def __init__(self, table: str, number: int, problem: str) -> None:
        self.table = table
        self.number = number
        super().__init__("bad-socket-table-line", f"{table} line {number}: {problem}")


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One socket of a /proc/net table; addresses in the records' canonical text."""

    proto: int
    local: str
    lport: int
    remote: str
    rport: int
    state: int
    inode: int


@dataclass(frozen=True, slots=True)
class Owner:
    """The process holding a socket's fd (its main thread's name)."""

    pid: int
    comm: str
    cgroup_id: int = 0
    container_id: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotLimits:
    """How much one snapshot may do (sockets.snapshot_* settings)."""

    max_sockets: int = 65536
    timeout: float = 30.0


@dataclass(slots=True)
class SnapshotResult:
    """What one snapshot found: records to publish and what was left out, by reason."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # sockets, by reason
    errors: Counter[str] = field(default_factory=Counter)  # problems met, by reason
    timed_out: bool = False  # the deadline stopped a step


# ---------------------------------------------------------------- parsing (pure)


def parse_address(text: str, family: int) -> tuple[str, int]:
    """``ADDR:PORT`` of a /proc/net table → (canonical address text, port).

    The kernel prints the address as 32-bit words in *host* byte order (``%08X`` of
    ``__be32``; IPv6 as four such words), and the port as a host-order number. So each
    word is turned back into its bytes with the native byte order before
    :func:`~flowscope.collector.socket_tracing.address_text` (which also shows an
    IPv4-mapped IPv6 address as IPv4, like the BPF path does).
    """
    address, sep, port = text.partition(":")
    if not sep or len(address) != _ADDRESS_HEX[family] or len(port) != 4:
        raise ValueError(f"address {text!r}")
    if not (address + port).isalnum():  # int() also takes a sign: no word or port is negative
        raise ValueError(f"address {text!r}")
    return _address(address, family), int(port, 16)


@functools.lru_cache(maxsize=4096)
def _address(hex_words: str, family: int) -> str:
    """Hex words → address text; remembered, since a table repeats few addresses."""
    words = [int(hex_words[i : i + 8], 16) for i in range(0, len(hex_words), 8)]
    return address_text(family, struct.pack(f"={len(words)}I", *words))


def _parse_fields(fields: list[str], family: int, proto: int) -> TableEntry:
    """One table line's fields → :class:`TableEntry` (ValueError naming what is wrong)."""
    if len(fields) < _MIN_FIELDS:
        raise ValueError(f"{len(fields)} fields, expected at least {_MIN_FIELDS}")
    local, lport = parse_address(fields[1], family)
    remote, rport = parse_address(fields[2], family)
    if len(fields[3]) != 2:
        raise ValueError(f"state {fields[3]!r}")
    if not fields[9].isdigit():
        raise ValueError(f"inode {fields[9]!r}")
    return TableEntry(proto, local, lport, remote, rport, int(fields[3], 16), int(fields[9]))


def parse_table(
    text: str, table: str, family: int, proto: int
) -> tuple[list[TableEntry], list[SnapshotParseError]]:
    """Every line after the header; malformed lines are returned as errors, not raised.

    Lines with inode 0 are passed over unparsed: TIME_WAIT and SYN_RECV entries, which
    no process holds (a busy node has tens of thousands of them; parsing them was 90 %
    of a snapshot's CPU with 20 000 in the tables).
    """
    entries, errors = [], []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split(None, _MIN_FIELDS)  # the inode is the last field needed
        if not fields or (len(fields) >= _MIN_FIELDS and fields[9] == "0"):
            continue
        try:
            entries.append(_parse_fields(fields, family, proto))
        except ValueError as error:
            errors.append(SnapshotParseError(table, number, str(error)))
    return entries, errors


def socket_kinds(entries: Iterable[TableEntry]) -> Iterator[tuple[str, TableEntry]]:
    """(event, entry) for each socket worth reporting, of one network namespace.

    TCP: ``accept`` when the local end is a listening (address, port) — the listener's
    own address or a wildcard one, either family, since a dual-stack listener's accepted
    IPv4 sockets appear as IPv4 here — else ``connect``. UDP: ``udp`` when connected.
    """
    entries = list(entries)
    listening = {(e.local, e.lport) for e in entries if e.proto == TCP and e.state == TCP_LISTEN}
    for entry in entries:
        if entry.inode == 0 or entry.rport == 0:
            continue
        if entry.proto == TCP and entry.state in TCP_CONNECTED:
            server = (entry.local, entry.lport) in listening or any(
                (w, entry.lport) in listening for w in WILDCARDS
            )
            yield ("accept" if server else "connect"), entry
        elif entry.proto == UDP and entry.state == UDP_CONNECTED:
            yield "udp", entry


def socket_inode(link: str) -> int:
    """The inode of an fd's link text ``socket:[N]``; 0 for anything else."""
    if link.startswith("socket:[") and link.endswith("]"):
        return int(link[8:-1])
    return 0


def snapshot_wire(
    event: str, entry: TableEntry, owner: Owner, observer: str, time_ns: int, netns: int = 0
) -> dict[str, Any]:
    """The ``raw.socket`` wire dict of one snapshot socket (``RawSocket.to_wire()``'s
    keys and order). ``tid`` is 0 ("not known"): fds belong to the whole process, and
    which thread called connect() or accept() is not recorded anywhere. ``netns``
    is the namespace cookie (the hooks' ``bpf_get_netns_cookie``), 0 when unknown."""
    return {
        "observer": observer,
        "time_ns": time_ns,
        "event": event,
        "proto": entry.proto,
        "src": entry.local,
        "sport": entry.lport,
        "dst": entry.remote,
        "dport": entry.rport,
        "pid": owner.pid,
        "tid": 0,
        "comm": owner.comm,
        "cgroup_id": owner.cgroup_id,
        "container_id": owner.container_id,
        "netns": netns,
    }


# ---------------------------------------------------------------- reading /proc


def namespaces(proc: Path, pids: Iterable[int]) -> dict[int, list[int]]:
    """Network-namespace inode → its processes (ascending), for the pids readable now."""
    groups: dict[int, list[int]] = {}
    for pid in pids:
        try:
            inode = os.stat(proc / str(pid) / "ns" / "net").st_ino
        except OSError:  # exited, or not ours to see
            continue
        groups.setdefault(inode, []).append(pid)
    return groups


def fd_sockets(proc: Path, pid: int) -> Iterator[int]:
    """Socket inodes of ``pid``'s open fds (none when it exited meanwhile).

    Raises PermissionError where the kernel refuses, so that the caller can say why
    instead of reporting fewer owners silently: listing the directory of another user's
    process needs CAP_DAC_READ_SEARCH (it is mode 0500, owned by that user); reading a
    link needs ptrace read access, which an AppArmor or SELinux profile (or a user
    namespace) can refuse with CAP_SYS_PTRACE effective.
    """
    directory = proc / str(pid) / "fd"
    try:
        names = os.listdir(directory)
    except PermissionError:
        raise
    except OSError:
        return
    for name in names:
        try:
            inode = socket_inode(os.readlink(directory / name))
        except PermissionError:
            raise
        except OSError:  # closed meanwhile
            continue
        if inode:
            yield inode


def netns_cookie(namespace: Path) -> int:
    """The cookie of the network namespace at ``namespace`` (a ``/proc/<pid>/ns/net``
    file, or ``/proc/self/fd/<n>`` of one already open), as the BPF hooks report it; 0
    when it cannot be had (kernel before 5.14, no CAP_SYS_ADMIN, the process exited)."""

    def probe() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return netns_cookie_of(sock)

    try:
        return in_network_namespace(namespace, probe)
    except OSError:
        return 0


def cgroups_by_pid(root: str) -> dict[int, tuple[int, str]]:
    """pid → (cgroup v2 id, container id) from every cgroup's ``cgroup.procs``.

    One walk instead of resolving each process's ``/proc/<pid>/cgroup`` path, because that
    path is relative to the reader's cgroup namespace (in a Kubernetes pod it starts with
    ``/..``), while ``cgroup.procs`` lists pids as the reader's PID namespace sees them.
    """
    found: dict[int, tuple[int, str]] = {}
    cgroups = [(os.stat(root).st_ino, "."), *walk_cgroups(root)]
    for inode, path in cgroups:
        try:
            pids = Path(root, path, "cgroup.procs").read_text().split()
        except OSError:  # removed meanwhile
            continue
        container = container_id_from_path(path) if path != "." else ""
        for pid in pids:
            found[int(pid)] = (inode, container)
    return found


class SocketSnapshot:
    """Reads the node's existing connections and their owners, once (blocking: run it in
    a worker thread). ``proc`` is the procfs mount showing the node's processes (with
    hostPID), ``cgroup_root`` the cgroup2 mount (found when not given), ``status`` the
    file whose CapEff says whether other processes' fds may be read."""

    def __init__(
        self,
        observer: str,
        metrics: SocketSnapshotMetrics,
        limits: SnapshotLimits = SnapshotLimits(),
        proc: Path = Path("/proc"),
        cgroup_root: str | None = None,
        status: Path = Path("/proc/self/status"),
    ) -> None:
        self.observer = observer
        self.limits = limits
        self.proc = proc
        self.cgroup_root = cgroup_root
        self.status = status
        self._metrics = metrics
        self._bad_log = RateLimitedLog(log)

    def may_read_fds(self) -> bool:
        """Whether CAP_SYS_PTRACE is effective (other users' fds are readable)."""
        try:
            return bool(effective_capabilities(self.status) >> CAP_SYS_PTRACE & 1)
        except (OSError, StartupError):  # no CapEff to read: as if missing, never fatal
            return False

    def take(self) -> list[dict[str, Any]]:
        """The snapshot's ``raw.socket`` wire dicts; metrics updated; never raises on input.

        Without CAP_SYS_PTRACE it logs one line and returns nothing.
        """
        if not self.may_read_fds():
            log.warning(
                "socket snapshot skipped: CAP_SYS_PTRACE is missing, so the owners of "
                "connections that existed before the collector started are not reported"
            )
            return []
        started = time.monotonic()
        result = self.collect(started + self.limits.timeout)
        self._metrics.seconds.set(time.monotonic() - started)
        for event, n in Counter(r["event"] for r in result.records).items():
            self._metrics.sockets.labels(event).inc(n)
        for reason, n in result.skipped.items():
            self._metrics.skipped.labels(reason).inc(n)
        for reason, n in result.errors.items():
            self._metrics.errors.labels(reason).inc(n)
        self._log_denials(result.errors)
        log.info(
            f"socket snapshot: {len(result.records)} existing connections reported",
            extra={"sockets": len(result.records), "skipped": dict(result.skipped)},
        )
        return result.records

    @staticmethod
    def _log_denials(errors: Counter[str]) -> None:
        """One line per kind of refusal, naming its cause (see :func:`fd_sockets`)."""
        if errors[FD_LIST_DENIED]:
            log.warning(
                f"socket snapshot incomplete: /proc/<pid>/fd of {errors[FD_LIST_DENIED]} "
                "processes of other users could not be listed (listing them needs "
                f"CAP_DAC_READ_SEARCH); {_CONSEQUENCE}"
            )
        if errors[FD_READ_DENIED]:
            log.warning(
                f"socket snapshot incomplete: ptrace read access to {errors[FD_READ_DENIED]} "
                "processes was refused although CAP_SYS_PTRACE is effective (an AppArmor or "
                "SELinux profile denies it, e.g. the container runtime's default AppArmor "
                f"profile: see docs/deploy.md, AppArmor); {_CONSEQUENCE}"
            )

    def collect(self, deadline: float) -> SnapshotResult:
        """The steps of :meth:`take`, stopping at ``deadline`` (monotonic seconds)."""
        result = SnapshotResult()
        now_ns = time.time_ns()
        found: list[tuple[str, TableEntry, int]] = []  # (event, entry, netns cookie)
        for inode, pids in namespaces(self.proc, process_ids(self.proc)).items():
            # Past the limit, the namespaces not read yet are not counted: "at least".
            if time.monotonic() > deadline or len(found) > self.limits.max_sockets:
                result.timed_out = len(found) <= self.limits.max_sockets
                break
            sockets, cookie = self._namespace_sockets(inode, pids, result)
            found += [(event, entry, cookie) for event, entry in sockets]
        if len(found) > self.limits.max_sockets:
            result.skipped["limit"] += len(found) - self.limits.max_sockets
            found = found[: self.limits.max_sockets]
        owners = self._owners({entry.inode for _, entry, _ in found}, deadline, result)
        unowned = "deadline" if result.timed_out else "no_owner"
        for event, entry, cookie in found:
            owner = owners.get(entry.inode)
            if owner is None:
                result.skipped[unowned] += 1
                continue
            wire = snapshot_wire(event, entry, owner, self.observer, now_ns, cookie)
            result.records.append(wire)
        if result.timed_out:
            result.errors["deadline"] += 1
        return result

    def _namespace_sockets(
        self, inode: int, pids: list[int], result: SnapshotResult
    ) -> tuple[list[tuple[str, TableEntry]], int]:
        """The connected sockets of namespace ``inode`` and its cookie (0 when it has no
        sockets), read through the first of ``pids`` still in it.

        Each process is read through its ``/proc/<pid>`` directory opened first: once the
        process exits, the kernel refuses every lookup under that open directory, even
        when the pid has gone to a new process (of another namespace, perhaps), where
        ``/proc/<pid>/…`` paths would lead to the new one.
        """
        for pid in pids:
            try:
                process = os.open(self.proc / str(pid), _DIRECTORY)
            except OSError:  # exited
                continue
            try:
                found = self._read_namespace(process, inode, result)
            finally:
                os.close(process)
            if found is not None:
                return found
        return [], 0

    def _read_namespace(
        self, process: int, inode: int, result: SnapshotResult
    ) -> tuple[list[tuple[str, TableEntry]], int] | None:
        """:meth:`_namespace_sockets` through one open ``/proc/<pid>`` directory; None when
        that process is no longer in namespace ``inode`` or its tables cannot be read.

        The namespace is opened before the tables are read and checked to be the one
        listed (the pid may have been reused before its directory was opened), and the
        cookie is read through that open namespace, which outlives the process.
        """
        try:
            namespace = os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=process)
        except OSError:  # exited
            return None
        try:
            if os.fstat(namespace).st_ino != inode:  # another process, or it moved
                return None
            entries = [
                entry
                for table, family, proto in TABLES
                for entry in self._read_table(process, table, family, proto, result)
            ]
            sockets = list(socket_kinds(entries))
            cookie = netns_cookie(Path(f"/proc/self/fd/{namespace}")) if sockets else 0
            return sockets, cookie
        except OSError as error:
            if _alive(process):  # not merely exited meanwhile
                result.errors["unreadable"] += 1
                self._bad_log.warning("unreadable", f"socket snapshot: {error}")
            return None
        finally:
            os.close(namespace)

    def _read_table(
        self, process: int, table: str, family: int, proto: int, result: SnapshotResult
    ) -> list[TableEntry]:
        """One table of the process whose ``/proc/<pid>`` directory is open as ``process``."""
        try:
            with open(f"net/{table}", opener=functools.partial(_open_at, process)) as file:
                text = file.read()
        except FileNotFoundError:
            if family == AF_INET6 and _alive(process):
                return []  # no IPv6 in this kernel
            raise
        entries, errors = parse_table(text, table, family, proto)
        for error in errors:
            result.errors[error.reason] += 1
            self._bad_log.warning(error.reason, f"socket snapshot: line skipped: {error}")
        return entries

    def _owners(
        self, wanted: set[int], deadline: float, result: SnapshotResult
    ) -> dict[int, Owner]:
        """Socket inode → owner: the lowest pid holding it (pids are scanned in order,
        and the scan stops as soon as every wanted socket has one)."""
        holders: dict[int, int] = {}
        for pid in process_ids(self.proc):
            if len(holders) == len(wanted):
                break
            if time.monotonic() > deadline:
                result.timed_out = True
                break
            try:
                for inode in fd_sockets(self.proc, pid):
                    if inode in wanted:
                        holders.setdefault(inode, pid)
            except PermissionError as error:
                listing = Path(str(error.filename)).name == "fd"
                result.errors[FD_LIST_DENIED if listing else FD_READ_DENIED] += 1
        if not holders:
            return {}
        cgroups = self._cgroups()
        described = {pid: self._describe(pid, cgroups) for pid in set(holders.values())}
        return {inode: described[pid] for inode, pid in holders.items()}

    def _cgroups(self) -> dict[int, tuple[int, str]]:
        try:
            root = self.cgroup_root or find_cgroup2_root()
            return cgroups_by_pid(root)
        except (OSError, StartupError) as error:  # no cgroup2 mounted: ids stay 0
            self._bad_log.warning("cgroups", f"socket snapshot: no cgroup ids: {error}")
            return {}

    def _describe(self, pid: int, cgroups: dict[int, tuple[int, str]]) -> Owner:
        try:  # any bytes a task named itself (prctl), decoded as the tracer decodes them
            name = (self.proc / str(pid) / "comm").read_bytes().rstrip(b"\n")
            comm = name.decode("utf-8", errors="replace")
        except OSError:  # exited after its fds were read: the socket went with it, or not
            comm = ""
        cgroup_id, container = cgroups.get(pid, (0, ""))
        return Owner(pid, comm, cgroup_id, container)


def _open_at(directory: int, path: str, flags: int) -> int:
    """``open()``'s opener for ``path`` relative to the open ``directory``."""
    return os.open(path, flags, dir_fd=directory)


def _alive(process: int) -> bool:
    """Whether the process of an open ``/proc/<pid>`` directory still runs (the kernel
    refuses lookups under it once the process has exited)."""
    try:
        os.stat("comm", dir_fd=process)
    except OSError:
        return False
    return True
