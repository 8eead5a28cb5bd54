"""pyroute2's synchronous ``IPRoute``, made and called on a thread of its own.

pyroute2 0.9 rebuilt ``IPRoute`` on an asyncio core: each request runs to completion on
the calling thread's event loop, or on the running one, so in a thread whose loop is
running (every flowscope service) it fails with "This event loop is already running".
0.8's ``IPRoute`` does blocking socket I/O and works anywhere. On a private thread, where
no loop runs, both versions work unchanged.

Each call blocks its caller until the answer is in (a request to the local kernel takes
well under a millisecond; adding a TC filter about a third of one). The services call
from worker threads (``asyncio.to_thread``), never on the event loop: the collector
attaches, lists and detaches there, the enricher's local mode reads its addresses there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyroute2.netlink.exceptions import NetlinkDumpInterrupted


class Netlink:
    """``IPRoute``'s methods, each run on one dedicated thread; answers as lists.

    A method's answer that is an iterator (pyroute2 returns generators for dumps when
    its ``nlm_generator`` option is set) is read to the end on that thread, so no netlink
    I/O happens elsewhere.

    A dump the kernel marks interrupted (``NLM_F_DUMP_INTR``: a link or address came or
    went while it ran) is asked for again, up to :data:`DUMP_ATTEMPTS` times: pyroute2
    0.8 raises ``NetlinkDumpInterrupted`` for it, and a listing of links or addresses
    must not fail because the node changed meanwhile (0.9 returns what it read).
    """

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        try:
            self._ipr = self._thread.submit(IPRoute).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        self._closed = False

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._ipr, name)

        def on_thread(*args: Any, **kwargs: Any) -> Any:
            if self._closed:
                raise RuntimeError(f"netlink {name}: the handle is closed")
            return self._thread.submit(_materialised, method, args, kwargs).result()

        return on_thread

    def close(self) -> None:
        """Close the netlink socket and end the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.submit(self._ipr.close).result()
        finally:
            self._thread.shutdown(wait=True)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Attempts at one dump. A veth added and deleted without pause interrupted 80% of the
# dumps of 120 links, up to 9 in a row (300 listings); a dump of them takes ~1 ms.
DUMP_ATTEMPTS = 100


def _materialised(method: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    attempts_left = DUMP_ATTEMPTS
    while True:
        try:
            answer = method(*args, **kwargs)
            return list(answer) if isinstance(answer, Iterator) else answer
        except NetlinkDumpInterrupted:
            attempts_left -= 1
            if not attempts_left:
                raise
