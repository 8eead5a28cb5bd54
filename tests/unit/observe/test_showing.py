"""observe's pure parts: subject narrowing, filters, line rendering, colour choice."""

from __future__ import annotations

import io

import pytest
from flowscope.cli import build_parser
from flowscope.cli import main as cli_main
from flowscope.core import config, records
from flowscope.observe import (
    Filters,
    Palette,
    Settings,
    choose_palette,
    compile_filters,
    endpoint_label,
    first_match,
    human_bytes,
    render_line,
    subject_matches,
    subscription_subjects,
    without_secrets,
)

from tests.support.flows import external, flow, pod

PLAIN = Palette(enabled=False)


def filters(**values: str) -> Filters:
    """Filters exactly as the CLI builds them from flags."""
    args = {name.replace("_", "."): value for name, value in values.items()}
    return config.load(Settings, args, env={}).filters


def test_namespace_narrows_the_subscription_both_ways() -> None:
    assert subscription_subjects(Filters()) == ["flowscope.flows.>"]
    assert subscription_subjects(filters(namespace="shop,db")) == [
        "flowscope.flows.shop.*",
        "flowscope.flows.*.shop",
        "flowscope.flows.db.*",
        "flowscope.flows.*.db",
    ]
    assert subscription_subjects(filters(pod="shop/cart-*")) == ["flowscope.flows.>"]


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("flowscope.flows.>", "flowscope.flows.a.b", True),
        ("flowscope.flows.>", "flowscope.flows", False),
        ("flowscope.flows.a.*", "flowscope.flows.a.b", True),
        ("flowscope.flows.a.*", "flowscope.flows.b.a", False),
        ("flowscope.flows.*.a", "flowscope.flows.b.a", True),
        ("flowscope.flows.*.a", "flowscope.flows.b.a.c", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected


def test_a_subject_matching_two_subscriptions_belongs_to_the_first() -> None:
    patterns = ["flowscope.flows.shop.*", "flowscope.flows.*.shop"]
    assert first_match(patterns, "flowscope.flows.shop.shop") == 0
    assert first_match(patterns, "flowscope.flows.web.shop") == 1
    assert first_match(patterns, "flowscope.flows.web.web") == -1


CART = pod("shop", "cart-1", "10.0.0.5", 41234, k8s_workload_name="cart", k8s_node_name="n1")
DNS = pod("kube-system", "coredns-1", "10.0.9.2", 53)
WEB = external("203.0.113.7", 443, "www.Example.com.")
RECORDS = {
    "cart→dns udp": flow(CART, DNS, transport="udp"),
    "cart→web tcp": flow(CART, WEB, node="n2"),
    "dns→web tcp": flow(DNS, WEB),
}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, set(RECORDS)),
        ({"namespace": "shop"}, {"cart→dns udp", "cart→web tcp"}),
        ({"namespace": "kube-system,other"}, {"cart→dns udp", "dns→web tcp"}),
        ({"pod": "cart-*"}, {"cart→dns udp", "cart→web tcp"}),
        ({"pod": "kube-system/cart-1"}, set()),
        ({"pod": "*/coredns-1"}, {"cart→dns udp", "dns→web tcp"}),
        ({"workload": "shop/cart"}, {"cart→dns udp", "cart→web tcp"}),
        ({"domain": "*.example.com"}, {"cart→web tcp", "dns→web tcp"}),
        ({"domain": "example.com"}, set()),
        ({"port": "53"}, {"cart→dns udp", "dns→web tcp"}),  # either endpoint
        ({"protocol": "TCP"}, {"cart→web tcp", "dns→web tcp"}),
        ({"node": "n2"}, {"cart→web tcp"}),
        ({"node": "n1"}, {"cart→dns udp", "cart→web tcp"}),  # the pod's node
        ({"namespace": "shop", "protocol": "udp"}, {"cart→dns udp"}),
        ({"protocol": "17"}, {"cart→dns udp"}),  # a number is its keyword
        ({"protocol": "icmpv6,58"}, set()),
    ],
)
def test_filters(flags: dict[str, str], expected: set[str]) -> None:
    keep = compile_filters(filters(**flags))
    assert {name for name, record in RECORDS.items() if keep(record)} == expected


def test_bad_filter_values_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["observe", "--port", "70000"]) == 2
    assert cli_main(["observe", "-o", "yaml"]) == 2
    assert cli_main(["observe", "--last", "-1"]) == 2
    assert cli_main(["observe", "--protocol", "tcp,foo"]) == 2  # before: shows nothing
    assert cli_main(["observe", "--protocol", "256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(line.startswith("flowscope: invalid setting") for line in err)
    assert "'foo' is no transport" in err[3] and "ipv6-icmp" in err[3]


def test_a_transport_is_compared_in_the_records_spelling() -> None:
    assert filters(protocol="TCP,17,icmpv6,200").protocol == ("tcp", "udp", "ipv6-icmp", "200")


@pytest.mark.parametrize(
    ("endpoint", "label"),
    [
        (pod("ns", "p", "10.0.0.1", 80), "ns/p:80"),
        (
            pod("ns", "p", "10.0.0.1", 80, process_executable_name="nginx", process_pid=7),
            "ns/p:80 [nginx pid 7]",
        ),
        (pod("ns", "p", "10.0.0.1", 80, process_pid=7), "ns/p:80 [pid 7]"),
        (
            records.Endpoint(
                "10.96.0.10",
                53,
                "service",
                {"k8s.namespace.name": "kube-system", "k8s.service.name": "kube-dns"},
            ),
            "service kube-system/kube-dns:53",
        ),
        (records.Endpoint("10.1.0.1", 10250, "node", {"k8s.node.name": "n1"}), "node/n1:10250"),
        (external("2001:db8::1", 443, "example.com"), "[2001:db8::1]:443 (example.com)"),
        (records.Endpoint("192.0.2.1", 0, "external"), "192.0.2.1"),
    ],
)
def test_endpoint_labels(endpoint: records.Endpoint, label: str) -> None:
    assert endpoint_label(endpoint.to_wire("source"), "source") == label


def test_a_line_has_time_ends_bytes_flags_and_node() -> None:
    record = flow(CART, WEB, sent=512, back=5 * 1024 * 1024, flags=["SYN", "RST"], node="n2")
    line = render_line(record, PLAIN)
    time_part, rest = line.split("  ", 1)
    assert len(time_part) == len("Nov 14 22:13:20.000")
    assert rest == (
        "shop/cart-1:41234 → 203.0.113.7:443 (www.Example.com.)  tcp  512 B → 5.0 MiB back"
        "  SYN,RST  on n2"
    )


def test_unknown_direction_is_not_drawn_as_an_arrow() -> None:
    record = flow(CART, WEB) | {"flow.direction": "unknown"}
    assert " <> " in render_line(record, PLAIN)


def test_colour_paints_roles_and_resets() -> None:
    line = render_line(flow(CART, WEB, flags=["RST"]), Palette(enabled=True))
    assert "\x1b[32mshop/cart-1:41234\x1b[0m" in line
    assert "\x1b[31mRST\x1b[0m" in line  # a reset stands out


class FakeTerminal(io.StringIO):
    """A text stream that says it is (or is not) a terminal."""

    def __init__(self, tty: bool, encoding: str = "utf-8") -> None:
        super().__init__()
        self._tty, self._encoding = tty, encoding

    def isatty(self) -> bool:
        return self._tty

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


@pytest.mark.parametrize(
    ("mode", "tty", "env", "enabled"),
    [
        ("auto", True, {}, True),
        ("auto", True, {"NO_COLOR": "1"}, False),
        ("auto", False, {}, False),
        ("always", False, {"NO_COLOR": "1"}, True),
        ("never", True, {}, False),
    ],
)
def test_colour_choice(mode: str, tty: bool, env: dict[str, str], enabled: bool) -> None:
    assert choose_palette(mode, FakeTerminal(tty), env).enabled is enabled


def test_ascii_terminal_gets_an_ascii_arrow() -> None:
    assert choose_palette("auto", FakeTerminal(False, "ascii"), {}).arrow == "->"


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_banner_url_leaves_credentials_out() -> None:
    assert (
        without_secrets("nats://u:secret@h:4222,tls://tok@h2:4222") == "nats://h:4222,tls://h2:4222"
    )
    assert without_secrets("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_follow_comes_from_its_short_flag_or_its_variable() -> None:
    """``-f`` like ``hubble observe -f``; a setting like every other, so also a variable."""
    ns = build_parser().parse_args(["observe", "--last", "3", "-f", "true"])
    args = {name: value for name, value in vars(ns).items() if name != "command"}
    assert config.load(Settings, args, env={}).follow
    assert config.load(Settings, {}, env={"FLOWSCOPE_FOLLOW": "yes"}).follow
    assert not config.load(Settings, {}, env={}).follow
