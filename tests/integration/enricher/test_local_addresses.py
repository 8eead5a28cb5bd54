"""Local mode's addresses, read from netlink in a network namespace of the test's own.

A point-to-point address (a tunnel, PPP, an OpenVPN ``net30`` link) has a local end and
a peer: netlink's ``IFA_LOCAL`` is this machine's, ``IFA_ADDRESS`` the peer's. On other
interfaces both are the one address (IPv6 sends ``IFA_ADDRESS`` alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare")

CHILD = """
import json
from flowscope.enricher.local import local_addresses
print(json.dumps(sorted(local_addresses())))
"""

SETUP = (
    "ip link set lo up"
    " && ip link add fs0 type veth peer name fs1"
    " && ip addr add 10.99.0.1 peer 10.99.0.2/32 dev fs0"
    " && ip addr add fd00:99::1 peer fd00:99::2/128 dev fs0"
    " && ip addr add 10.98.0.1/24 dev fs1"
    ' && exec "$@"'
)


def addresses_in_namespace() -> set[str]:
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", SETUP, "sh", sys.executable, "-c", CHILD],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(found)


def test_point_to_point_addresses_count_their_local_end_not_the_peer() -> None:
    found = addresses_in_namespace()
    assert {"127.0.0.1", "::1", "10.99.0.1", "fd00:99::1", "10.98.0.1"} <= found
    assert "10.99.0.2" not in found and "fd00:99::2" not in found
