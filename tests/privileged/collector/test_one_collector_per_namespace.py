"""Two collectors in one network namespace (a DaemonSet's surge update, a second
deployment): both use the same filter priority and handle, so the second removed the
running one's filters as leftovers of a crashed run, and whichever stopped first removed
the other's. The second now waits until the first has stopped (its filters removed), then
starts and attaches; nothing of either is left after both stopped."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest

from tests.privileged.collector.collector_process import CollectorProcess, nats_inside
from tests.privileged.collector.node import Node
from tests.support import nats_server
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with Node(tag=f"fsone{os.getpid()}", ipv6=False).built() as built:
        yield built


@pytest.fixture(scope="module")
def server(node: Node) -> Iterator[nats_server.NatsServer]:
    with nats_inside(node) as started:
        yield started


def filter_counts(node: Node) -> list[int]:
    return [len(node.flowscope_filters(pod.host_if)) for pod in node.pods]


def start_in_background(node: Node, proc: CollectorProcess) -> threading.Thread:
    """``proc.start()`` on a thread of its own (in the node's namespace): it returns only
    once the collector has logged that it started (or fails when it exits first)."""

    def start() -> None:
        with node.inside(), contextlib.suppress(AssertionError):
            proc.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def logged(proc: CollectorProcess, text: str) -> bool:
    return bool(proc.log_path) and any(text in str(e.get("msg", "")) for e in proc.logs())


async def test_a_second_collector_waits_for_the_first_and_then_takes_over(
    node: Node, server: nats_server.NatsServer
) -> None:
    with node.inside():
        first = CollectorProcess(server.url, node.host).start()
    second = CollectorProcess(server.url, node.host)
    try:
        starting = start_in_background(node, second)
        await eventually(lambda: logged(second, "another collector runs"), what="waiting")
        assert not logged(second, "leftover TC filters")
        assert filter_counts(node) == [2, 2]
        assert first.metric("flowscope_collector_interfaces_attached") == 2
        assert first.stop() == 0
        starting.join(60)
        assert logged(second, "collector started")
        line = second.wait_log("leftover TC filters")
        assert line["leftover_filters_removed"] == 0  # the first removed its own
        assert filter_counts(node) == [2, 2]
        assert second.metric("flowscope_collector_interfaces_attached") == 2
        assert second.stop() == 0
        assert filter_counts(node) == [0, 0]
    finally:
        first.close()
        second.close()


async def test_a_waiting_collector_stops_cleanly_on_sigterm(
    node: Node, server: nats_server.NatsServer
) -> None:
    with node.inside():
        first = CollectorProcess(server.url, node.host).start()
    second = CollectorProcess(server.url, node.host)
    try:
        start_in_background(node, second)
        await eventually(lambda: logged(second, "another collector runs"), what="waiting")
        assert not logged(second, "leftover TC filters")
        assert second.stop() == 0
        assert filter_counts(node) == [2, 2]
        assert first.metric("flowscope_collector_interfaces_attached") == 2
        assert first.stop() == 0
        assert filter_counts(node) == [0, 0]
    finally:
        first.close()
        second.close()
