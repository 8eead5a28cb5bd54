"""The HTTP endpoint every service has: Prometheus ``/metrics``, ``/healthz``, ``/readyz``.

An empty host (``:9090``) or ``[::]`` means every address of both families, so the one
address the Helm chart sets works in IPv4-only, IPv6-only and dual-stack clusters (the
kubelet probes, and Prometheus scrapes, the pod IP of the cluster's family). ``0.0.0.0``
keeps meaning IPv4 only.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry


@dataclass(slots=True)
class Health:
    """Readiness by named check: ready when every registered check is ready."""

    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def set(self, name: str, ready: bool, detail: str = "") -> None:
        self.checks[name] = (ready, detail)

    @property
    def ready(self) -> bool:
        return all(ok for ok, _ in self.checks.values())

    def report(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "checks": {n: {"ready": ok, "detail": d} for n, (ok, d) in self.checks.items()},
        }


# Hosts meaning "every address": one dual-stack IPv6 socket, IPv4 alone without IPv6.
ALL_ADDRESSES = ("", "::")
# What socket()/bind() say on a kernel without IPv6 (booted with ipv6.disable=1, or
# built without it); disable_ipv6=1 alone still lets "::" be bound, dual-stack.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (port 0 picks a free one) → (host, port);
    the host is ``""`` for ``:port``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"{text!r}: unbalanced brackets around the host")
        host = host[1:-1]
    return host, int(port)


def listening_socket(port: int) -> socket.socket:
    """A TCP socket bound to every address: IPv6 with IPV6_V6ONLY off, so IPv4 clients
    arrive as ``::ffff:a.b.c.d`` (asyncio would set IPV6_V6ONLY, and bind ``::`` for
    IPv6 alone); IPv4 ``0.0.0.0`` when the kernel has no IPv6."""
    try:
        return _bound(socket.AF_INET6, "::", port)
    except OSError as error:
        if error.errno not in _NO_IPV6:
            raise
    return _bound(socket.AF_INET, "0.0.0.0", port)


def _bound(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def application(registry: CollectorRegistry, health: Health) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response(health.report(), status=200 if health.ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start(
    address: str, registry: CollectorRegistry, health: Health
) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (to clean up) and the bound port."""
    host, port = parse_address(address)
    sock = listening_socket(port) if host in ALL_ADDRESSES else None
    runner = web.AppRunner(application(registry, health), access_log=None)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    )
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound
