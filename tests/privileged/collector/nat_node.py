"""A routed "node" with a kube-proxy-like DNAT rule (and one with an uplink that
masquerades, :class:`SnatNode`), for the NAT-pairing tests.

A *host* namespace routes between two *pod* namespaces (a /24 per veth pair: pod A
10.209.1.2, pod B 10.209.2.2; fd00:209:1::2, fd00:209:2::2), as routed CNIs do. Its
nftables ``prerouting`` nat chain rewrites the "Service" address ``10.209.100.10``
(``fd00:209:100::10``) to pod B, port 80 → 8080 for TCP and 53 → 5353 for UDP, the way
kube-proxy's KUBE-SERVICES / KUBE-SEP rules DNAT a ClusterIP. No bridge, so replies
always come back through the host and are un-NATed there (a bridge would need
br_netfilter). Every name contains ``natpair`` and the test process id;
:meth:`NatNode.destroy` deletes everything.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.privileged.collector.node import Node, Pod, netns, sh

VIP4, VIP6 = "10.209.100.10", "fd00:209:100::10"
TCP_PORT, TCP_TARGET = 80, 8080
UDP_PORT, UDP_TARGET = 53, 5353

NFT_RULES = f"""
table inet natpair {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP4} tcp dport {TCP_PORT} dnat ip to 10.209.2.2:{TCP_TARGET}
    ip daddr {VIP4} udp dport {UDP_PORT} dnat ip to 10.209.2.2:{UDP_TARGET}
    ip6 daddr {VIP6} tcp dport {TCP_PORT} dnat ip6 to [fd00:209:2::2]:{TCP_TARGET}
    ip6 daddr {VIP6} udp dport {UDP_PORT} dnat ip6 to [fd00:209:2::2]:{UDP_TARGET}
  }}
}}
"""


@dataclass
class NatNode(Node):
    """Host namespace routing between pods A and B, with DNAT for the Service address."""

    tag: str = field(default_factory=lambda: f"natpair{os.getpid()}")

    def create(self, pods: int = 2) -> NatNode:
        sh("ip", "netns", "add", self.host)
        self.hx("ip", "link", "set", "lo", "up")
        self.hx("sysctl", "-q", "net.ipv4.ip_forward=1")
        self.hx("sysctl", "-q", "net.ipv6.conf.all.forwarding=1")
        for n in range(1, pods + 1):
            self._routed_pod(n)
        self.hx("nft", "-f", "-", stdin=NFT_RULES)
        return self

    def hx(self, *args: str, stdin: str | None = None) -> str:  # type: ignore[override]
        done = subprocess.run(
            ["ip", "netns", "exec", self.host, *args], input=stdin, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _routed_pod(self, n: int) -> Pod:
        pod = Pod(f"{self.tag}p{n}", f"vnat{n}", f"10.209.{n}.2", f"fd00:209:{n}::2")
        sh("ip", "netns", "add", pod.ns)
        px = ("ip", "netns", "exec", pod.ns)
        self.hx("ip", "link", "add", pod.host_if, "gso_max_segs", "1", "type", "veth",
                "peer", "name", "eth0", "gso_max_segs", "1", "netns", pod.ns)  # fmt: skip
        self.hx("ip", "addr", "add", f"10.209.{n}.1/24", "dev", pod.host_if)
        self.hx("ip", "addr", "add", f"fd00:209:{n}::1/64", "dev", pod.host_if, "nodad")
        self.hx("ip", "link", "set", pod.host_if, "up")
        sh(*px, "ip", "link", "set", "lo", "up")
        sh(*px, "ip", "addr", "add", f"{pod.ip4}/24", "dev", "eth0")
        sh(*px, "ip", "addr", "add", f"{pod.ip6}/64", "dev", "eth0", "nodad")
        sh(*px, "ip", "link", "set", "eth0", "up")
        sh(*px, "ip", "route", "add", "default", "via", f"10.209.{n}.1")
        sh(*px, "ip", "-6", "route", "add", "default", "via", f"fd00:209:{n}::1")
        self.pods.append(pod)
        return pod

    @contextlib.contextmanager
    def built(self, pods: int = 2) -> Iterator[NatNode]:
        try:
            self.create(pods)
            yield self
        finally:
            self.destroy()

    def inside(self) -> contextlib.AbstractContextManager[None]:
        return netns(self.host)


# ---------------------------------------------------------------- SNAT: a pod leaving the node

OUTSIDE4, OUTSIDE6 = "10.209.250.2", "fd00:209:250::2"  # a server "outside the cluster"
UPLINK4, UPLINK6 = "10.209.250.1", "fd00:209:250::1"  # the node's address on the uplink
UPLINK = "vup"
# Masquerade picks source ports in this range, outside the pods' ephemeral ports
# (32768-60999), so the translated port always differs from the pod's.
MASQ_PORTS = (20000, 29999)

MASQ_RULES = f"""
table inet snatpair {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{UPLINK}" meta l4proto {{ tcp, udp }} masquerade to :{MASQ_PORTS[0]}-{MASQ_PORTS[1]}
  }}
}}
"""


@dataclass
class SnatNode(NatNode):
    """A NatNode whose host also has an uplink (veth ``vup``) to an *outside* namespace,
    and masquerades the pods' TCP and UDP leaving through it, as a node does for a pod's
    connection to the internet. The outside has no route to the pods: a reply reaches
    a pod only through the node's de-SNAT."""

    tag: str = field(default_factory=lambda: f"snatpair{os.getpid()}")
    outside: Pod | None = None

    def create(self, pods: int = 1) -> SnatNode:
        super().create(pods)
        out = Pod(f"{self.tag}o", UPLINK, OUTSIDE4, OUTSIDE6)
        self.outside = out
        sh("ip", "netns", "add", out.ns)
        ox = ("ip", "netns", "exec", out.ns)
        self.hx("ip", "link", "add", UPLINK, "gso_max_segs", "1", "type", "veth",
                "peer", "name", "eth0", "gso_max_segs", "1", "netns", out.ns)  # fmt: skip
        self.hx("ip", "addr", "add", f"{UPLINK4}/24", "dev", UPLINK)
        self.hx("ip", "addr", "add", f"{UPLINK6}/64", "dev", UPLINK, "nodad")
        self.hx("ip", "link", "set", UPLINK, "up")
        sh(*ox, "ip", "link", "set", "lo", "up")
        sh(*ox, "ip", "addr", "add", f"{OUTSIDE4}/24", "dev", "eth0")
        sh(*ox, "ip", "addr", "add", f"{OUTSIDE6}/64", "dev", "eth0", "nodad")
        sh(*ox, "ip", "link", "set", "eth0", "up")
        self.hx("nft", "-f", "-", stdin=MASQ_RULES)
        return self

    @contextlib.contextmanager
    def built(self, pods: int = 1) -> Iterator[SnatNode]:
        try:
            self.create(pods)
            yield self
        finally:
            self.destroy()

    def destroy(self) -> None:
        super().destroy()
        subprocess.run(["ip", "netns", "del", f"{self.tag}o"], capture_output=True)
