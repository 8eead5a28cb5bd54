"""Cgroup v2 id → container id, resolved from the cgroup tree in user space.

The kernel reports a task's cgroup v2 id (``bpf_get_current_cgroup_id``), which is the
inode number of the cgroup's directory in the cgroup2 filesystem. The container runtime
names that directory after the container, so the id is found by walking the tree for the
directory with that inode and parsing its path (:func:`container_id_from_path`).

Walking is not free (a node has thousands of cgroups), so results live in a bounded LRU
cache, a rescan fills the cache with every container cgroup it passes, and a miss
triggers a rescan only within a budget (``rescan_burst`` per ``rescan_interval_s``), so
a flood of unknown ids costs a bounded number of walks. The budget is a burst, not one
walk per interval: a container started just after a scan (a scale-up) has its events
read after its cgroup exists, so a rescan finds it; answering "" until the next interval
would publish its first connections as "not a container" for good. Cgroup ids are never
reused, so a cached answer stays right for as long as it is cached.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flowscope.core.errors import StartupError

# One path component naming a container, for each runtime and cgroup driver:
#   cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope, libpod-<id>.scope,
#   nerdctl-<id>.scope  (systemd driver: a scope per container; nerdctl asks runc for
#     "system.slice:nerdctl:<id>", which runc's systemd driver names nerdctl-<id>.scope)
#   <parent>.slice:cri-containerd:<id>, …:crio:<id>, …:docker:<id>, …:nerdctl:<id>
#     (containerd/CRI-O with the systemd driver but a nested, non-systemd cgroup tree)
#   <id>  under /kubepods/…/pod<uid>/ or /docker/ (containerd and Docker, cgroupfs driver)
#   crio-<id>, libpod-<id>  (CRI-O and podman, cgroupfs driver: they keep their prefix)
# conmon's cgroup (crio-conmon-<id>[.scope], libpod-conmon-<id>.scope) holds the runtime's
# monitor process, not the container, and is deliberately not matched.
_COMPONENT = re.compile(
    r"^(?:(?:cri-containerd|crio|docker|libpod|nerdctl)-(?P<scope>[0-9a-f]{64})\.scope"
    r"|(?:crio|libpod)-(?P<cgroupfs>[0-9a-f]{64})"
    r"|.*:(?:cri-containerd|crio|docker|nerdctl):(?P<colon>[0-9a-f]{64})"
    r"|(?P<bare>[0-9a-f]{64}))$"
)
CGROUP2_MAGIC_FSTYPE = "cgroup2"
# Deeper than any runtime nests (kubepods/qos/pod/container/… is 5); bounds the walk.
MAX_DEPTH = 12


def container_id_from_path(path: str) -> str:
    """The container id named by a cgroup path, or "" when it names none.

    The deepest matching component wins: a container may create cgroups of its own
    below its scope, and those still belong to it.
    """
    for component in reversed(path.strip("/").split("/")):
        match = _COMPONENT.match(component)
        if match:
            return next(group for group in match.groups() if group)
    return ""


def find_cgroup2_root(preferred: str = "/sys/fs/cgroup", mounts: str = "/proc/mounts") -> str:
    """The cgroup2 mount to use: ``preferred`` itself, or its ``unified`` child on a
    hybrid (v1 + v2) host, or else the first cgroup2 mount listed in ``mounts``.

    Raises :class:`StartupError` when the host has no cgroup2 filesystem.
    """
    cgroup2 = [fields[1] for fields in _mount_fields(mounts) if fields[2] == CGROUP2_MAGIC_FSTYPE]
    for candidate in (preferred, os.path.join(preferred, "unified"), *cgroup2):
        if os.path.normpath(candidate) in cgroup2:
            return os.path.normpath(candidate)
    raise StartupError("cgroup2", f"no cgroup2 filesystem mounted at or under {preferred}")


def _mount_fields(mounts: str) -> Iterator[list[str]]:
    try:
        with open(mounts, encoding="utf-8") as file:
            for line in file:
                fields = line.split()
                if len(fields) >= 3:
                    yield fields
    except OSError:
        return


def walk_cgroups(root: str) -> Iterator[tuple[int, str]]:
    """(inode, path relative to ``root``) of every cgroup directory, depth-bounded.

    Uses the directory entries' own inode numbers (no stat per directory); cgroups that
    vanish during the walk are skipped.
    """
    stack = [(root, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            yield entry.inode(), os.path.relpath(entry.path, root)
            if depth + 1 < MAX_DEPTH:
                stack.append((entry.path, depth + 1))


@dataclass(slots=True)
class ResolverCounts:
    """How the resolver has been doing, for metrics."""

    hits: int = 0
    misses: int = 0
    scans: int = 0
    throttled: int = 0  # misses answered "" because the rescan budget was spent


class ContainerResolver:
    """Resolves cgroup v2 ids to container ids with a bounded LRU cache.

    ``capacity`` bounds the cache; ``root`` is the cgroup2 mount (found from
    ``/sys/fs/cgroup`` when not given); misses may walk the tree again at most
    ``rescan_burst`` times per ``rescan_interval_s``; ``clock`` is the monotonic clock
    (a seam for tests).
    """

    def __init__(
        self,
        capacity: int = 4096,
        root: str | None = None,
        rescan_interval_s: float = 1.0,
        rescan_burst: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.root = root
        self.rescan_interval_s = rescan_interval_s
        self.rescan_burst = rescan_burst
        self.counts = ResolverCounts()
        self._clock = clock
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._window_start: float | None = None  # when the current budget interval began
        self._window_scans = 0

    def container_id(self, cgroup_id: int) -> str:
        """The container of cgroup ``cgroup_id``, or "" (not a container, or not found)."""
        cached = self._cache.get(cgroup_id)
        if cached is not None:
            self._cache.move_to_end(cgroup_id)
            self.counts.hits += 1
            return cached
        self.counts.misses += 1
        if not self._may_scan():
            self.counts.throttled += 1
            return ""
        found = self._scan(cgroup_id)
        return found if found is not None else ""

    def container_ids(self, cgroup_ids: Iterable[int]) -> dict[int, str]:
        """:meth:`container_id` of each id (a batch of events looks each id up once)."""
        return {cgroup_id: self.container_id(cgroup_id) for cgroup_id in cgroup_ids}

    def _may_scan(self) -> bool:
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self.rescan_interval_s:
            self._window_start, self._window_scans = now, 0
        if self._window_scans >= self.rescan_burst:
            return False
        self._window_scans += 1
        return True

    def _scan(self, wanted: int) -> str | None:
        """Walk the tree; cache every container cgroup and the wanted id's answer.

        Returns the wanted id's container ("" for a cgroup that is no container), or None
        when no cgroup has that id (it may appear later, so that is not cached).
        """
        if self.root is None:
            self.root = find_cgroup2_root()
        self.counts.scans += 1
        found: str | None = "" if _inode(self.root) == wanted else None
        for inode, path in walk_cgroups(self.root):
            container = container_id_from_path(path)
            if inode == wanted:
                found = container
            elif container:
                self._remember(inode, container)
        if found is not None:
            self._remember(wanted, found)  # last, so a full cache keeps it
        return found

    def _remember(self, cgroup_id: int, container: str) -> None:
        self._cache[cgroup_id] = container
        self._cache.move_to_end(cgroup_id)
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)


def cgroup_id_of(path: str | Path) -> int:
    """The cgroup v2 id of the cgroup directory ``path`` (its inode number)."""
    return os.stat(path).st_ino


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None
