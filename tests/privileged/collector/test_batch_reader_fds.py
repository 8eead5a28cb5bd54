"""BatchReader's swap of the flow maps leaves no map fd open when it fails.

``retire()`` opens both flow maps by id; when the second open fails (here: the process
out of file descriptors, EMFILE), the first must be closed again, and a later drain
must work as if nothing had happened.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from typing import Any

import pytest


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def program() -> Iterator[Any]:
    from flowscope.collector.loading import FlowProgramConfig, load_flow_program

    loaded = load_flow_program(FlowProgramConfig(max_flows=1024, cache_slots=0))
    try:
        yield loaded
    finally:
        loaded.close()


def test_a_swap_failing_at_the_second_map_closes_the_first(program: Any) -> None:
    from flowscope.collector.draining import BatchReader

    reader = BatchReader(program.flows.map_fd, 64)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest, second = os.dup(0), os.dup(0)  # the two lowest free fd numbers
    os.close(lowest)
    os.close(second)
    before = open_fds()
    # Room for exactly one more fd: the active map opens, the spare one cannot.
    resource.setrlimit(resource.RLIMIT_NOFILE, (second, hard))
    try:
        with pytest.raises(OSError) as failed:
            reader.retire()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert failed.value.errno == errno.EMFILE
    assert open_fds() == before
    assert not reader.pending

    assert list(reader.chunks()) == []  # the next drain swaps and empties as usual
    assert open_fds() == before
