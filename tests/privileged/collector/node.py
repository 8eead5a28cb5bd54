"""A small "node" built from network namespaces, for real-kernel collector tests.

A *host* namespace holds a bridge (10.203.0.1/24, fd00:203::1/64) and the host ends of
veth pairs; each *pod* namespace holds the other end as ``eth0`` with 10.203.0.<n>/24
and fd00:203::<n>/64. Addresses exist only inside these namespaces. Every name carries
the test process id, and :meth:`Node.destroy` deletes everything.

``with node.inside():`` moves the calling thread into the host namespace (setns), so
netlink sockets, AF_PACKET sockets, a nats-server or a collector subprocess started
there all live in the node. Offloads are limited (``gso_max_segs 1``) so each skb is one
wire packet and an AF_PACKET capture is exact ground truth.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
TRAFFIC = str(Path(__file__).with_name("traffic.py"))
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args: str) -> str:
    """Run a command, fail loudly with its stderr."""
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace ``name`` for the block."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(original, CLONE_NEWNET)
        os.close(target)
        os.close(original)


@dataclass
class Pod:
    ns: str
    host_if: str
    ip4: str
    ip6: str


@dataclass
class Node:
    """The host namespace, its bridge, and pods."""

    tag: str = field(default_factory=lambda: f"cf{os.getpid()}")
    pods: list[Pod] = field(default_factory=list)
    ipv6: bool = True  # False: no IPv6 at all, hence no link-local chatter (MLD, RS)
    gso: bool = False  # True: veth offloads as the kernel sets them (TSO super-packets)

    @property
    def host(self) -> str:
        return f"{self.tag}h"

    def hx(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.host, *args)

    def flowscope_filters(self, ifname: str) -> list[str]:
        """flowscope's TC filters on one of the host namespace's interfaces, per hook."""
        lines = []
        for hook in ("ingress", "egress"):
            out = self.hx("tc", "filter", "show", "dev", ifname, hook)
            lines += [f"{hook} {line}" for line in out.splitlines() if "flowscope" in line]
        return lines

    def create(self, pods: int = 2) -> Node:
        sh("ip", "netns", "add", self.host)
        self._quiet(self.host)
        self.hx("ip", "link", "set", "lo", "up")
        self.hx("ip", "link", "add", "br0", "type", "bridge")
        self.hx("ip", "addr", "add", "10.203.0.1/24", "dev", "br0")
        if self.ipv6:
            self.hx("ip", "addr", "add", "fd00:203::1/64", "dev", "br0", "nodad")
        self.hx("ip", "link", "set", "br0", "up")
        for _ in range(pods):
            self.add_pod()
        return self

    def add_pod(self) -> Pod:
        n = len(self.pods) + 10
        pod = Pod(f"{self.tag}p{n}", f"veth{n}", f"10.203.0.{n}", f"fd00:203::{n}")
        sh("ip", "netns", "add", pod.ns)
        self._quiet(pod.ns)
        px = ("ip", "netns", "exec", pod.ns)
        limit = () if self.gso else ("gso_max_segs", "1")
        self.hx("ip", "link", "add", pod.host_if, *limit, "type", "veth",
                "peer", "name", "eth0", *limit, "netns", pod.ns)  # fmt: skip
        self.hx("ip", "link", "set", pod.host_if, "master", "br0", "up")
        sh(*px, "ip", "link", "set", "lo", "up")
        sh(*px, "ip", "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        if self.ipv6:
            sh(*px, "ip", "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad")
        sh(*px, "ip", "link", "set", "eth0", "up")
        sh(*px, "ip", "route", "add", "default", "via", "10.203.0.1")
        self.pods.append(pod)
        return pod

    def _quiet(self, ns: str) -> None:
        if not self.ipv6:
            for scope in ("all", "default"):
                sh(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    f"net.ipv6.conf.{scope}.disable_ipv6=1",
                )

    @contextlib.contextmanager
    def built(self, pods: int = 2) -> Iterator[Node]:
        """Create the namespaces for the block, delete them after, whatever happens."""
        self.create(pods)
        try:
            yield self
        finally:
            self.destroy()

    def destroy(self) -> None:
        for pod in self.pods:
            subprocess.run(["ip", "netns", "del", pod.ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.host], capture_output=True)

    def inside(self) -> contextlib.AbstractContextManager[None]:
        return netns(self.host)

    def start(self, pod: Pod, *args: str) -> subprocess.Popen[str]:
        """Start a traffic command in a pod; returns the process (stdout: JSON lines)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", pod.ns, sys.executable, TRAFFIC, *args],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, pod: Pod, *args: str) -> dict[str, object]:
        out = sh("ip", "netns", "exec", pod.ns, sys.executable, TRAFFIC, *args)
        return json.loads(out.strip().splitlines()[-1])

    def tcp_segments(self, pod: Pod) -> tuple[int, int]:
        """(segments received, segments sent) by the pod's TCP: the kernel counts GSO
        segments one by one. Sent is OutSegs plus RetransSegs: OutSegs leaves out
        segments holding only retransmitted bytes, which are on the wire all the same (a
        loaded machine retransmits now and then)."""
        out = sh("ip", "netns", "exec", pod.ns, "cat", "/proc/net/snmp")
        names, values = [line.split()[1:] for line in out.splitlines() if line.startswith("Tcp:")]
        tcp = dict(zip(names, values, strict=True))
        return int(tcp["InSegs"]), int(tcp["OutSegs"]) + int(tcp["RetransSegs"])

    def tx_rx(self, pod: Pod) -> tuple[int, int]:
        """(tx_packets, rx_packets) of the pod's eth0, from the kernel's own counters."""
        out = sh("ip", "netns", "exec", pod.ns, "cat",
                 "/sys/class/net/eth0/statistics/tx_packets",
                 "/sys/class/net/eth0/statistics/rx_packets")  # fmt: skip
        tx, rx = out.split()
        return int(tx), int(rx)


def wait_listening(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line).get("listening"), line


def finish(proc: subprocess.Popen[str], timeout: float = 10) -> dict[str, object]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


FlowId = tuple[int, str, str, int, int]  # proto, src, dst, sport, dport


class Capture:
    """Ground truth: every IP packet on one interface, per (proto, src, dst, sport, dport).

    An AF_PACKET socket sees what the TC hooks see (received and sent frames), counted
    as packets and IP-level bytes (the IP header's length field). Open it inside the
    namespace that holds the interface.
    """

    def __init__(self, ifname: str, vnet: bool = False) -> None:
        self.vnet = vnet
        # With vnet (PACKET_VNET_HDR) each frame comes with its GSO size, so a super-packet
        # can be counted as the wire segments it stands for.
        self.segments: Counter[FlowId] = Counter()
        self.wire_bytes: Counter[FlowId] = Counter()
        self.packets: Counter[FlowId] = Counter()
        self.bytes: Counter[FlowId] = Counter()
        self.flags: Counter[FlowId] = Counter()
        # Per (direction, source MAC): packets and IP bytes, any flow.
        self.by_origin_packets: Counter[tuple[str, bytes]] = Counter()
        self.by_origin_bytes: Counter[tuple[str, bytes]] = Counter()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self._sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: no drops
        if vnet:
            self._sock.setsockopt(263, 15, 1)  # SOL_PACKET, PACKET_VNET_HDR
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65536)
            except TimeoutError:
                continue
            gso_size = 0
            if self.vnet:
                gso_type, gso_size = frame[1], struct.unpack("<H", frame[4:6])[0]
                gso_size = gso_size if gso_type else 0
                frame = frame[10:]
            parsed = parse_frame(frame)
            if parsed is not None and gso_size:
                fid, size, _ = parsed
                headers = l34_header_length(frame)
                segments = -(-(size - headers) // gso_size)
                self.segments[fid] += segments
                self.wire_bytes[fid] += size + (segments - 1) * headers
            elif parsed is not None:
                self.segments[parsed[0]] += 1
                self.wire_bytes[parsed[0]] += parsed[1]
            if parsed is not None:
                fid, size, flags = parsed
                self.packets[fid] += 1
                self.bytes[fid] += size
                self.flags[fid] |= flags
                origin = ("egress" if address[2] == PACKET_OUTGOING else "ingress", frame[6:12])
                self.by_origin_packets[origin] += 1
                self.by_origin_bytes[origin] += size

    def stop(self) -> None:
        """Stop capturing; fails if the socket dropped any frame (no exact ground truth)."""
        self._stop.set()
        self._thread.join()
        # PACKET_STATISTICS (SOL_PACKET 263, option 6): struct tpacket_stats {packets, drops}
        _, drops = struct.unpack("II", self._sock.getsockopt(263, 6, 8))
        self._sock.close()
        assert drops == 0, f"capture dropped {drops} frames"


def l34_header_length(frame: bytes) -> int:
    """IPv4/IPv6 + TCP/UDP header bytes of a frame (what each GSO segment repeats)."""
    ip = frame[14:]
    if ip[0] >> 4 == 4:
        l3, proto = (ip[0] & 0x0F) * 4, ip[9]
    else:
        l3, proto = 40, ip[6]
    return l3 + ((ip[l3 + 12] >> 4) * 4 if proto == 6 else 8)


def parse_frame(frame: bytes) -> tuple[FlowId, int, int] | None:
    """(flow id, IP bytes, TCP flags) of an Ethernet frame carrying IPv4/IPv6."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    ip = frame[14:]
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        size, proto = struct.unpack("!H", ip[2:4])[0], ip[9]
        src, dst = (
            socket.inet_ntop(socket.AF_INET, ip[12:16]),
            socket.inet_ntop(socket.AF_INET, ip[16:20]),
        )
        l4 = ip[ihl:]
    elif ethertype == 0x86DD:
        size, proto = struct.unpack("!H", ip[4:6])[0] + 40, ip[6]
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, ip[8:24]),
            socket.inet_ntop(socket.AF_INET6, ip[24:40]),
        )
        l4 = ip[40:]
    else:
        return None
    flags = 0
    if proto in (6, 17, 132):
        sport, dport = struct.unpack("!HH", l4[:4])
        if proto == 6:
            flags = l4[13]
    elif proto in (1, 58):
        sport, dport = l4[0], l4[1]
    else:
        sport = dport = 0
    return (proto, src, dst, sport, dport), size, flags
