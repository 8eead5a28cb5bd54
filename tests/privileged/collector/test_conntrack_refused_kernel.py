"""ctnetlink refused by the real kernel (no CAP_NET_ADMIN) for a batch of lookups: the
kernel answers the datagram's first request with EPERM and none of the others, so the
refusal must be read from that one answer, not waited out as a timeout."""

from __future__ import annotations

import subprocess
import sys

CODE = """
from flowscope.collector.conntrack import Conntrack, ConntrackUnavailable, CtTuple
try:
    Conntrack().lookup_many([CtTuple(6, bytes(4), bytes(4), 1 + i, 2) for i in range(5)])
except ConntrackUnavailable as e:
    print('unavailable', e.errno)
"""


def test_batch_refused_without_cap_net_admin_is_unavailable() -> None:
    """Five lookups in one datagram: ConntrackUnavailable (EPERM), which turns pairing
    off, not ConntrackFailed (a timeout counted again at every drain)."""
    done = subprocess.run(
        ["unshare", "--net", "setpriv", "--inh-caps=-all", "--bounding-set=-net_admin",
         "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", CODE],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["unavailable 1"]
