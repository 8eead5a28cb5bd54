"""flowscope.core.serving: which addresses the HTTP endpoint answers on, over real sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest
from flowscope.core import serving
from prometheus_client import CollectorRegistry

from tests.support.probing import healthz


async def reachable(address: str) -> dict[str, bool]:
    runner, port = await serving.start(address, CollectorRegistry(), serving.Health())
    try:
        return {host: await asyncio.to_thread(healthz, host, port) for host in ("127.0.0.1", "::1")}
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),
        (":9090", ("", 9090)),
        ("[::]:9090", ("::", 9090)),
        ("[fd00::1]:0", ("fd00::1", 0)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_address(text: str, parsed: tuple[str, int]) -> None:
    assert serving.parse_address(text) == parsed


@pytest.mark.parametrize("text", ["9090", "host:", "host:http", "[::1:9090", "::1]:9090", ":70000"])
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        serving.parse_address(text)


@pytest.mark.parametrize("address", [":0", "[::]:0"])
async def test_every_address_means_both_families(address: str) -> None:
    """What the chart sets: the kubelet probes the pod IP of the cluster's family, IPv4
    or IPv6, so one address must answer on both."""
    assert await reachable(address) == {"127.0.0.1": True, "::1": True}


async def test_ipv4_wildcard_stays_ipv4_only() -> None:
    assert await reachable("0.0.0.0:0") == {"127.0.0.1": True, "::1": False}


async def test_a_specific_ipv6_address_in_brackets() -> None:
    assert await reachable("[::1]:0") == {"127.0.0.1": False, "::1": True}


async def test_a_port_in_use_is_an_error_not_a_fallback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(OSError) as error:
            await serving.start(f":{taken.getsockname()[1]}", CollectorRegistry(), serving.Health())
    assert error.value.errno == 98  # EADDRINUSE
