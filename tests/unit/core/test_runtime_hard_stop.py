"""What ends a service that cannot finish stopping, and what an unusable HTTP address
does at start-up.

A worker thread blocked for good (the exporter's stdout sink writing to a pipe nobody
reads) kept the process alive after the drain, through any number of SIGTERMs, until
SIGKILL: the interpreter waits for the default executor's threads without a limit, and a
service that stopped on a signal ignores later ones. It now ends ``drain_timeout``
seconds after the drain deadline, status 1, with a line saying so."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

# A service whose root task waits in a worker thread that never returns, and a second
# root task that prints once the stop began.
STUCK = """
import asyncio, sys, threading
from flowscope.core import runtime

async def body(rt):
    async def stuck():
        await asyncio.to_thread(threading.Event().wait)

    async def told():
        await rt.wait_stopping()
        print("stopping", flush=True)

    rt.spawn(stuck(), "stuck")
    rt.spawn(told(), "told")
    print("started", flush=True)

settings = runtime.RuntimeSettings(
    http_address="", log_format="text", log_level="info", drain_timeout=0.3
)
sys.exit(runtime.run("t", settings, body))
"""


def run_stuck(signals: list[signal.Signals]) -> tuple[int, str]:
    """The stuck service sent ``signals`` once it has started (each after the stop
    began); its exit status and stderr. The bound on the wait only keeps a regression
    from hanging the suite: without the hard stop the process never ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", STUCK],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "started\n"
        child.send_signal(signals[0])
        assert child.stdout.readline() == "stopping\n"
        for sig in signals[1:]:
            child.send_signal(sig)
        _, err = child.communicate(timeout=60)
        return child.returncode, err
    finally:
        child.kill()
        child.wait()


def test_a_thread_blocked_for_good_does_not_keep_a_stopped_service_running() -> None:
    status, err = run_stuck([signal.SIGTERM])
    assert status == 1
    assert "drain deadline passed; cancelling" in err
    assert "still running 0.6 s after the stop began; exiting without finishing" in err


def test_a_second_signal_does_not_undo_the_hard_stop() -> None:
    status, err = run_stuck([signal.SIGTERM, signal.SIGINT, signal.SIGTERM])
    assert status == 1
    assert "exiting without finishing" in err


def test_a_service_that_stops_in_time_is_not_cut_short() -> None:
    """The hard stop is a timer that must not fire for a service that ended by itself:
    the same service without the stuck task exits 0 after SIGTERM."""
    code = STUCK.replace('rt.spawn(stuck(), "stuck")', "")
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "started\n"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0
        assert "exiting without finishing" not in err
    finally:
        child.kill()
        child.wait()


def test_an_http_address_in_use_is_one_line_and_status_2() -> None:
    """Before, a taken port (or an address not on this machine) ended the service with
    an OSError traceback and status 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        code = STUCK.replace('http_address=""', f"http_address={address!r}")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 2
    assert done.stdout == ""  # the body never started
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"flowscope t: start-up check http_address failed: cannot listen on {address!r} "
        "(--http-address, FLOWSCOPE_HTTP_ADDRESS): [Errno 98]"
    )
