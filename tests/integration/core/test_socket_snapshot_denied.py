"""The collector's start-up socket snapshot where the kernel refuses to show other
processes' fds: it says why, once, and carries on (flowscope.collector.socket_snapshotting).

Real refusals, no fakes: a connection is held by a process of uid 65534, and the snapshot
runs in a child (i) as root with the chart's capabilities less CAP_DAC_READ_SEARCH
(that process's /proc/<pid>/fd, mode 0500, cannot be listed), and with exactly the
chart's (it can), and
(ii) in a new user namespace, where CapEff shows CAP_SYS_PTRACE but the kernel refuses
ptrace read access to the host's processes — the refusal an AppArmor profile gives.
Needs root (setpriv, unshare).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for setpriv and unshare")

CHART_CAPS = "-all,+net_admin,+sys_admin,+sys_resource,+sys_ptrace,+dac_read_search"
WITHOUT_DAC_READ_SEARCH = CHART_CAPS.removesuffix(",+dac_read_search")
SNAPSHOT = r"""
import json, logging, sys
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_snapshotting import SocketSnapshot
from prometheus_client import CollectorRegistry

class Lines(logging.Handler):
    lines = []
    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))

logging.getLogger().addHandler(Lines())
logging.getLogger().setLevel(logging.INFO)
port = int(sys.argv[1])
registry = CollectorRegistry()
records = SocketSnapshot("node", SocketSnapshotMetrics.create(registry)).take()
errors = {s.labels["reason"]: s.value for m in registry.collect() for s in m.samples
          if s.name == "flowscope_collector_socket_snapshot_errors_total"}
print(json.dumps({
    "owners": [r["pid"] for r in records if r["dport"] == port],
    "warnings": [m for level, m in Lines.lines if level == "WARNING"],
    "errors": errors,
}))
"""


@pytest.fixture
def other_users_connection() -> Iterator[tuple[int, int]]:
    """(port, pid): a loopback connection whose client end a uid-65534 process holds."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        hold = f"import socket; s = socket.create_connection(('127.0.0.1', {port})); input()"
        client = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", hold],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        accepted, _ = server.accept()
        try:
            yield port, client.pid
        finally:
            client.kill()
            client.wait()
            accepted.close()


def snapshot(prefix: list[str], port: int) -> dict[str, object]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", SNAPSHOT, str(port)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_unlistable_fds_are_named_once_with_the_missing_capability(
    other_users_connection: tuple[int, int],
) -> None:
    port, _ = other_users_connection
    bounds = f"--bounding-set={WITHOUT_DAC_READ_SEARCH}"
    result = snapshot(["setpriv", "--inh-caps=-all", bounds], port)
    assert result["owners"] == []
    (warning,) = [w for w in result["warnings"] if "could not be listed" in w]  # type: ignore[attr-defined]
    assert "CAP_DAC_READ_SEARCH" in warning
    assert result["errors"]["fd_list_denied"] >= 1  # type: ignore[index]


def test_refused_ptrace_read_is_named_once_as_a_security_profile(
    other_users_connection: tuple[int, int],
) -> None:
    port, _ = other_users_connection
    result = snapshot(["unshare", "--user", "--map-root-user"], port)
    assert result["owners"] == []
    (warning,) = [w for w in result["warnings"] if "ptrace read access" in w]  # type: ignore[attr-defined]
    assert "CAP_SYS_PTRACE is effective" in warning and "AppArmor" in warning
    assert result["errors"]["fd_read_denied"] >= 1  # type: ignore[index]


def test_with_every_capability_the_other_users_connection_has_its_owner(
    other_users_connection: tuple[int, int],
) -> None:
    """(A process of the machine itself may still refuse ptrace read: that is said.)"""
    port, pid = other_users_connection
    result = snapshot([], port)
    assert result["owners"] == [pid]
    assert not [w for w in result["warnings"] if "could not be listed" in w]  # type: ignore[attr-defined]


def test_with_the_charts_capabilities_the_other_users_connection_has_its_owner(
    other_users_connection: tuple[int, int],
) -> None:
    port, pid = other_users_connection
    result = snapshot(["setpriv", "--inh-caps=-all", f"--bounding-set={CHART_CAPS}"], port)
    assert result["owners"] == [pid]
    assert not [w for w in result["warnings"] if "could not be listed" in w]  # type: ignore[attr-defined]
