"""Collector settings: names other parts rely on, defaults, bad values."""

from __future__ import annotations

import pytest
from flowscope.collector.cache_reading import membarrier_global_available
from flowscope.collector.service import node_name, program_config
from flowscope.collector.settings import Settings
from flowscope.core import config
from flowscope.core.errors import ConfigError


def test_defaults() -> None:
    s = config.load(Settings, {}, {})
    assert s.interfaces.include == ("*",) and s.interfaces.exclude == ("lo",)
    assert s.interfaces.skip_bridges is True
    assert (s.flows.active_timeout, s.flows.max_entries) == (5.0, 65536)
    assert (s.dns.port, s.dns.capture_bytes) == (53, 512)
    assert s.flows.cache_slots == 1024
    assert s.flows.nat_pairing is True
    # The cache is compiled in where membarrier(MEMBARRIER_CMD_GLOBAL) can retire a half.
    slots = 1024 if membarrier_global_available() else 0
    assert program_config(s).cflags()[1:] == [
        "-DMAX_FLOWS=65536", f"-DFLOW_CACHE_SLOTS={slots}", "-DDNS_PORT=53",
        "-DDNS_CAPTURE_LEN=512", "-DDNS_RINGBUF_PAGES=64", "-DTUNNEL_PORT_0=4789",
        "-DTUNNEL_PORT_1=8472", "-DTUNNEL_PORT_2=6081", "-DTUNNEL_PORT_3=0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "ports"),
    [("4789", (4789,)), (" 1, 65535 ,8472,6081", (1, 65535, 8472, 6081)), ("", ())],
)
def test_tunnel_ports_reach_the_program_four_at_most(value: str, ports: tuple[int, ...]) -> None:
    s = config.load(Settings, {}, {"FLOWSCOPE_FLOWS_TUNNEL_PORTS": value})
    assert s.flows.tunnel_ports == ports
    padded = ports + (0,) * (4 - len(ports))
    assert program_config(s).cflags()[-4:] == [
        f"-DTUNNEL_PORT_{i}={p}" for i, p in enumerate(padded)
    ]


@pytest.mark.parametrize(
    ("value", "reason"),
    [("x", "'x' is not an integer"), ("1,2,3,4,5", "at most 4 ports"),
     ("0", "must be between 1 and 65535"), ("4789,70000", "must be between 1 and 65535"),
     ("1.5", "'1.5' is not an integer")],
)  # fmt: skip
def test_bad_tunnel_ports_stop_start_up_naming_the_setting(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config.load(Settings, {}, {"FLOWSCOPE_FLOWS_TUNNEL_PORTS": value})
    assert str(raised.value) == f"invalid setting FLOWSCOPE_FLOWS_TUNNEL_PORTS: {reason}"


@pytest.mark.parametrize("value", ["3", "-1", "2097152"])
def test_cache_slots_must_be_a_power_of_two_or_zero(value: str) -> None:
    with pytest.raises(ConfigError):
        config.load(Settings, {}, {"FLOWSCOPE_FLOWS_CACHE_SLOTS": value})
    assert config.load(Settings, {}, {"FLOWSCOPE_FLOWS_CACHE_SLOTS": "0"}).flows.cache_slots == 0


def test_environment_names() -> None:
    env = {
        "FLOWSCOPE_NODE_NAME": "n1",
        "FLOWSCOPE_INTERFACES_INCLUDE": "eth*,veth*",
        "FLOWSCOPE_INTERFACES_EXCLUDE": "lo,docker0",
        "FLOWSCOPE_INTERFACES_SKIP_BRIDGES": "false",
        "FLOWSCOPE_FLOWS_MAX_ENTRIES": "1024",
        "FLOWSCOPE_DNS_PORT": "5353",
    }
    s = config.load(Settings, {}, env)
    assert s.node_name == "n1" and s.interfaces.include == ("eth*", "veth*")
    assert s.interfaces.exclude == ("lo", "docker0") and s.interfaces.skip_bridges is False
    assert s.flows.max_entries == 1024 and s.dns.port == 5353


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLOWSCOPE_FLOWS_MAX_ENTRIES", "0"),
        ("FLOWSCOPE_FLOWS_ACTIVE_TIMEOUT", "-1"),
        ("FLOWSCOPE_DNS_PORT", "70000"),
        ("FLOWSCOPE_DNS_CAPTURE_BYTES", "10"),
        ("FLOWSCOPE_DNS_RING_BUFFER_PAGES", "3"),
    ],
)
def test_bad_values_name_the_setting(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        config.load(Settings, {}, {var: value})


def test_node_name_fallbacks() -> None:
    s = config.load(Settings, {}, {})
    assert node_name(s, {"NODE_NAME": "k8s-node"}) == "k8s-node"
    assert node_name(s, {}) != ""
    assert (
        node_name(config.load(Settings, {}, {"FLOWSCOPE_NODE_NAME": "x"}), {"NODE_NAME": "y"})
        == "x"
    )


def test_socket_snapshot_settings() -> None:
    s = config.load(Settings, {}, {})
    assert (s.sockets.snapshot, s.sockets.snapshot_max_sockets) == (True, 65536)
    env = {
        "FLOWSCOPE_SOCKETS_SNAPSHOT": "false",
        "FLOWSCOPE_SOCKETS_SNAPSHOT_MAX_SOCKETS": "100",
        "FLOWSCOPE_SOCKETS_SNAPSHOT_TIMEOUT": "2.5",
    }
    s = config.load(Settings, {}, env)
    assert (s.sockets.snapshot, s.sockets.snapshot_max_sockets) == (False, 100)
    assert s.sockets.snapshot_timeout == 2.5
    with pytest.raises(ConfigError, match="FLOWSCOPE_SOCKETS_SNAPSHOT_TIMEOUT"):
        config.load(Settings, {}, {"FLOWSCOPE_SOCKETS_SNAPSHOT_TIMEOUT": "0"})


def test_nat_pairing_can_be_turned_off() -> None:
    settings = config.load(Settings, {}, {"FLOWSCOPE_FLOWS_NAT_PAIRING": "false"})
    assert settings.flows.nat_pairing is False


def test_accept_hook_setting() -> None:
    """Off by default; FLOWSCOPE_SOCKETS_ACCEPT_HOOK turns it on (the service passes it
    to SocketTracer)."""
    assert config.load(Settings, {}, {}).sockets.accept_hook is False
    env = {"FLOWSCOPE_SOCKETS_ACCEPT_HOOK": "true"}
    assert config.load(Settings, {}, env).sockets.accept_hook is True
