"""Test tiers: unit (no marker), integration (real nats-server), privileged (root + BPF).

Tests under tests/integration are marked ``integration``; under tests/privileged,
``privileged``. A privileged test skips when not root or without BPF — except when
FS_TESTS_REQUIRE_PRIVILEGED=1 (set by the test command under CI), where that skip
becomes a failure saying why.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import nats_server


def privileged_problem() -> str | None:
    """Why privileged tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not running as root"
    if not Path("/sys/fs/bpf").exists():
        return "no BPF filesystem at /sys/fs/bpf"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no kernel BTF (/sys/kernel/btf/vmlinux)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (apt-get install python3-bpfcc; venv with --system-site-packages)"
    if not Path(f"/lib/modules/{os.uname().release}/build").exists():
        return "kernel headers not linked (run scripts/bootstrap)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "privileged" in parts:
            item.add_marker(pytest.mark.privileged)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is None:
        return
    problem = privileged_problem()
    if problem is None:
        return
    if os.environ.get("FS_TESTS_REQUIRE_PRIVILEGED") == "1":
        pytest.fail(f"privileged tier required (CI) but cannot run: {problem}", pytrace=False)
    pytest.skip(f"privileged tier skipped: {problem}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print how many tests of each tier ran, so the output shows every tier ran."""
    counts = {"unit": 0, "integration": 0, "privileged": 0}
    for key in ("passed", "failed"):
        for rep in terminalreporter.stats.get(key, []):
            if getattr(rep, "when", "call") != "call":
                continue
            kw = rep.keywords
            tier = (
                "privileged"
                if "privileged" in kw
                else "integration"
                if "integration" in kw
                else "unit"
            )
            counts[tier] += 1
    terminalreporter.write_line(
        "tiers run: " + ", ".join(f"{tier} {n}" for tier, n in counts.items())
    )


@pytest.fixture(scope="session")
def nats_srv() -> Iterator[nats_server.NatsServer]:
    """One real nats-server (JetStream) per test session."""
    server = nats_server.start()
    yield server
    server.close()


@pytest.fixture
async def nc(nats_srv: nats_server.NatsServer) -> AsyncIterator[object]:
    """A connected nats-py client to the session's server."""
    import nats

    client = await nats.connect(nats_srv.url)
    yield client
    await client.drain()
