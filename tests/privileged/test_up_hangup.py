"""`flowscope up` when its terminal closes: SIGHUP stops the pipeline as Ctrl-C does.

Every child runs in a session of its own, so the terminal's hangup reaches `up` alone;
left to SIGHUP's default action, `up` died at once and nats-server, the services (the
collector's filters still attached) and its temporary directory stayed behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.collector.node import Node


@pytest.fixture
def node() -> Iterator[Node]:
    with Node(tag=f"hup{os.getpid()}", ipv6=False).built(pods=1) as built:
        yield built


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workdir(pid: int) -> str:
    """The ``-sd`` directory on a nats-server's command line: inside up's temporary one."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return str(Path(args[args.index(b"-sd") + 1].decode()).parent)


def test_a_hangup_stops_the_children_and_removes_the_temporary_directory(node: Node) -> None:
    with tempfile.TemporaryFile() as err:
        with node.inside():
            up = subprocess.Popen(
                [sys.executable, "-m", "flowscope.cli", "up", "--log-format", "text"],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )  # fmt: skip
        children: list[int] = []
        workdir = ""
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and up.poll() is None:
                err.seek(0)
                if b"flowscope up: ready" in err.read():
                    break
                time.sleep(0.2)
            children = sorted(_children(up.pid))  # started in order: nats-server first
            assert len(children) == 4, "flowscope up never got ready with its four children"
            workdir = _workdir(children[0])
            up.send_signal(signal.SIGHUP)
            status = up.wait(90)
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            assert status == 0, stderr[-2000:]
            assert [pid for pid in children if _running(pid)] == []
            assert not Path(workdir).exists()
            assert node.flowscope_filters(node.pods[0].host_if) == []
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
            for pid in reversed(children):  # the collector first: it removes its filters
                if _running(pid):
                    os.kill(pid, signal.SIGTERM)
                    time.sleep(3)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
