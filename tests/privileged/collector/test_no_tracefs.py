"""The collector needs no tracefs: with it unmounted, the start-up checks pass and both
BPF programs load and attach (TC programs, cgroup socket hooks; the optional fexit
accept hook is attached by BTF id, without tracefs too).

Run in a child process with a mount namespace of its own (tracefs unmounted there only)
and a cgroup namespace rooted at a cgroup of its own, where it mounts cgroup2: the socket
tracer attaches to that cgroup, not to the host's root, which other tests may use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flowscope.collector.containers import find_cgroup2_root

CHILD = """
import prometheus_client
from flowscope.collector import checks
from flowscope.collector.containers import ContainerResolver
from flowscope.collector.loading import FlowProgramConfig, load_flow_program
from flowscope.collector.socket_tracing import SocketTracer

checks.run_all()
program = load_flow_program(FlowProgramConfig(max_flows=1024))
program.close()
tracer = SocketTracer("n1", ContainerResolver(), prometheus_client.CollectorRegistry())
tracer.open()
print("attached", len(tracer.program_ids), flush=True)
tracer.close()
"""

# In the new namespaces: no tracefs anywhere; cgroup2 ($2) rooted at the test's cgroup.
NAMESPACED = """
umount -l /sys/kernel/tracing 2>/dev/null
umount -l /sys/kernel/debug/tracing 2>/dev/null
test ! -e /sys/kernel/tracing/events || exit 3
umount -l "$2" && mount -t cgroup2 none "$2" || exit 4
exec "$0" -c "$1"
"""


def test_checks_pass_and_programs_attach_without_tracefs() -> None:
    root = find_cgroup2_root()
    cgroup = Path(root, f"fxc-notracefs-{os.getpid()}")
    cgroup.mkdir()
    try:
        done = subprocess.run(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup),
             "unshare", "--mount", "--cgroup", "--propagation", "private",
             "sh", "-c", NAMESPACED, sys.executable, CHILD, root],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        cgroup.rmdir()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attached 13" in done.stdout
