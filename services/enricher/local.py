"""Local mode: no Kubernetes, so an address is either this machine's (``host``) or not.

Used by ``flowscope up`` and on a plain Linux host. This machine's addresses come from
netlink (pyroute2, already a dependency of the collector) and are re-read periodically
so that an interface coming up later is recognised.
"""

from __future__ import annotations

import ipaddress
import socket

from flowscope.core import subjects
from flowscope.core.netlink import Netlink
from flowscope.enricher.identities import Identity, external, identity

MAX_CACHED = 100_000


def local_addresses() -> frozenset[str]:
    """Every address configured on this machine's interfaces (canonical text).

    ``IFA_LOCAL`` first: on a point-to-point address (a tunnel, PPP) it is this end and
    ``IFA_ADDRESS`` the peer's; elsewhere they are one address, or (IPv6) only
    ``IFA_ADDRESS`` is sent."""
    found: set[str] = set()
    with Netlink() as ip:
        for addr in ip.get_addr():
            text = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
            if text:
                found.add(str(ipaddress.ip_address(text.split("%")[0])))
    return frozenset(found)


class LocalResolver:
    """``host`` for this machine's addresses, ``external`` for the rest."""

    def __init__(self, addresses: frozenset[str], host_name: str | None = None) -> None:
        self.host_name = host_name or socket.gethostname()
        self._addresses = addresses
        self._cache: dict[str, Identity] = {}
        self.generation = 0  # bumped when _cache loses entries (as Inventory.generation)

    @property
    def ready(self) -> bool:
        return True

    def update(self, addresses: frozenset[str]) -> None:
        if addresses != self._addresses:
            self._addresses = addresses
            self._cache.clear()
            self.generation += 1

    def resolve(self, address: str) -> Identity:
        found = self._cache.get(address)
        if found is None:
            if address in self._addresses:
                found = identity("host", subjects.HOST_TOKEN, self.host_name, address, {})
            else:
                found = external(address)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
                self.generation += 1
            self._cache[address] = found
        return found

    def by_container(self, container_id: str) -> Identity | None:
        return None

    def other_addresses(self, address: str) -> tuple[str, ...]:
        return ()
