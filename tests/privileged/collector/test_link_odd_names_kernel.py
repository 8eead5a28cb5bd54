"""Interface names that are not UTF-8 (Linux takes any byte but '/', ':' and blanks).

pyroute2 hands such a name over as bytes, and matching it against the str patterns raised
TypeError: with one present the collector could not start, and one created later ended
link watching (no interface attached or forgotten after it). The name is now decoded as
``os.fsdecode`` does, like ``socket.if_nameindex`` and the environment the patterns are
read from."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from flowscope.collector.link_watching import InterfaceSelection, LinkWatcher
from flowscope.collector.metrics import CollectorMetrics
from prometheus_client import CollectorRegistry

from tests.privileged.collector.node import netns
from tests.support.waiting import eventually

AT_START = b"fsodd\xff0"
LATER = b"fsodd\xfe1"
PLAIN_LATER = b"fsplain2"


@dataclass
class RecordingAttacher:
    attached: dict[int, str] = field(default_factory=dict)

    def attach(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        self.attached[ifindex] = ifname
        return True

    def detach(self, ifindex: int) -> bool:
        return self.attached.pop(ifindex, None) is not None

    def repair(self, ifindex: int, ifname: str, ethernet: bool = True) -> bool:
        return False

    def forget(self, ifindex: int) -> None:
        self.attached.pop(ifindex, None)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    watched, peers = f"fson{os.getpid()}", f"fsop{os.getpid()}"
    for name in (watched, peers):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield watched, peers
    finally:
        for name in (watched, peers):
            subprocess.run(["ip", "netns", "del", name], check=False)


def add_veth(watched: str, peers: str, name: bytes) -> None:
    """A veth called ``name`` whose peer is in ``peers`` (so it is not a stacked pair)."""
    peer = b"p" + name[-1:]
    subprocess.run(
        [b"ip", b"-n", watched.encode(), b"link", b"add", name, b"type", b"veth", b"peer",
         b"name", peer, b"netns", peers.encode()],
        check=True,
    )  # fmt: skip


@dataclass
class Seen:
    at_start: int  # attached by the start listing
    listed: list[str]  # their names
    attached: dict[int, str]  # after two more links were added
    names: dict[int, str]  # socket.if_nameindex() then


async def watch(watched: str, peers: str, selection: InterfaceSelection) -> Seen:
    attacher = RecordingAttacher()
    watcher = LinkWatcher(attacher, selection, CollectorMetrics.create(CollectorRegistry()))
    at_start = watcher.start()
    listed = sorted(attacher.attached.values())
    stopping = asyncio.Event()
    task = asyncio.create_task(watcher.run(stopping))
    try:
        for name in (LATER, PLAIN_LATER):
            await asyncio.to_thread(add_veth, watched, peers, name)
        # The plain one comes after the odd one: attached only if watching went on.
        await eventually(
            lambda: task.done() or "fsplain2" in attacher.attached.values(), 5, "fsplain2"
        )
        names = dict(socket.if_nameindex())
    finally:
        stopping.set()
        await task  # raises what ended it
        watcher.close()
    return Seen(at_start, listed, dict(attacher.attached), names)


def run_in(watched: str, peers: str, selection: InterfaceSelection) -> Seen:
    def inside() -> Seen:
        with netns(watched):
            return asyncio.run(watch(watched, peers, selection))

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(inside).result(timeout=60)


def test_names_that_are_not_utf8_are_attached_like_any(namespaces: tuple[str, str]) -> None:
    watched, peers = namespaces
    add_veth(watched, peers, AT_START)
    seen = run_in(watched, peers, InterfaceSelection())
    assert seen.at_start == 1 and seen.listed == [os.fsdecode(AT_START)]
    # Under the names Python's socket module gives them.
    assert seen.attached == {i: name for i, name in seen.names.items() if name != "lo"}
    assert sorted(seen.attached.values()) == sorted(
        os.fsdecode(n) for n in (AT_START, LATER, PLAIN_LATER)
    )


def test_patterns_match_names_that_are_not_utf8(namespaces: tuple[str, str]) -> None:
    """A pattern as it arrives from the environment (surrogate-escaped bytes) excludes."""
    watched, peers = namespaces
    add_veth(watched, peers, AT_START)
    selection = InterfaceSelection(exclude=("lo", os.fsdecode(b"fsodd\xff*")))
    seen = run_in(watched, peers, selection)
    assert seen.at_start == 0
    assert sorted(seen.attached.values()) == sorted(os.fsdecode(n) for n in (LATER, PLAIN_LATER))
