"""The HTTP endpoint every service has: Prometheus ``/metrics``, ``/healthz``, ``/readyz``."""

from __future__ import annotations

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


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; port 0 picks a free one) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


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
    runner = web.AppRunner(application(registry, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound
