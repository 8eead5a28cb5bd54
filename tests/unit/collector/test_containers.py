"""Cgroup path → container id parsing, and the resolver's cache over a directory tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowscope.collector.containers import (
    ContainerResolver,
    cgroup_id_of,
    container_id_from_path,
    find_cgroup2_root,
)
from flowscope.core.errors import StartupError

CID = "4f3c9a1b2d8e7f60" * 4
OTHER = "0123456789abcdef" * 4
POD = "pod0c8e3a41_2b7d_4e0f_9a55_1f2e3d4c5b6a"


@pytest.mark.parametrize(
    "path",
    [
        # containerd, systemd driver
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD}.slice/cri-containerd-{CID}.scope",
        # containerd, cgroupfs driver
        f"/kubepods/burstable/{POD.replace('_', '-')}/{CID}",
        f"/kubepods/{POD}/{CID}",
        # containerd nested under its service (systemd driver, non-systemd cgroup tree)
        f"/system.slice/containerd.service/kubepods-besteffort-{POD}.slice:cri-containerd:{CID}",
        # CRI-O
        f"/kubepods.slice/kubepods-{POD}.slice/crio-{CID}.scope",
        f"/kubepods-besteffort-{POD}.slice:crio:{CID}",
        # Docker, systemd and cgroupfs drivers
        f"/system.slice/docker-{CID}.scope",
        f"/docker/{CID}",
        # podman
        f"/machine.slice/libpod-{CID}.scope",
        # nerdctl, systemd driver, rootful and rootless (runc names the scope
        # "system.slice:nerdctl:<id>" asks for); cgroupfs: /<namespace>/<id>
        f"/system.slice/nerdctl-{CID}.scope",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/nerdctl-{CID}.scope",
        f"/system.slice:nerdctl:{CID}",
        f"/default/{CID}",
        # a cgroup the container made below its own scope still belongs to it
        f"/kubepods.slice/cri-containerd-{CID}.scope/init.scope",
        f"/docker/{CID}/child/grandchild",
    ],
)
def test_container_forms(path: str) -> None:
    assert container_id_from_path(path) == CID


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/system.slice/containerd.service",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD}.slice",
        f"/kubepods.slice/crio-conmon-{CID}.scope",  # CRI-O's monitor, not the container
        f"/system.slice/docker-{CID[:-1]}.scope",  # 63 hex
        f"/system.slice/docker-{CID.upper()}.scope",  # runtimes write lower-case hex
        f"/docker/{CID}x",
        "/user.slice/user-1000.slice/session-3.scope",
    ],
)
def test_not_containers(path: str) -> None:
    assert container_id_from_path(path) == ""


@pytest.mark.parametrize(
    "path",
    [
        # CRI-O, cgroupfs driver: <pod cgroup>/crio-<id>, no systemd scope (minikube's
        # default for CRI-O)
        f"/kubepods/burstable/{POD.replace('_', '-')}/crio-{CID}",
        f"/kubepods/{POD.replace('_', '-')}/crio-{CID}",
        # podman, cgroupfs manager: <parent>/libpod-<id>
        f"/libpod_parent/libpod-{CID}",
    ],
    ids=["crio-burstable", "crio-guaranteed", "podman"],
)
def test_cgroupfs_forms_with_a_runtime_prefix(path: str) -> None:
    assert container_id_from_path(path) == CID


@pytest.mark.parametrize(
    "path",
    [
        # conmon next to the container, both drivers, and podman's conmon scope
        f"/kubepods/burstable/{POD.replace('_', '-')}/crio-conmon-{CID}",
        f"/machine.slice/libpod-conmon-{CID}.scope",
        f"/kubepods/{POD.replace('_', '-')}/crio-{CID}x",
    ],
)
def test_monitors_next_to_containers_are_not_containers(path: str) -> None:
    assert container_id_from_path(path) == ""


def test_deepest_match_wins() -> None:
    assert container_id_from_path(f"/docker/{OTHER}/docker/{CID}") == CID


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_tree(root: Path, *paths: str) -> dict[str, int]:
    ids = {}
    for path in paths:
        (root / path).mkdir(parents=True, exist_ok=True)
        ids[path] = cgroup_id_of(root / path)
    return ids


def test_resolver_finds_directories_by_inode(tmp_path: Path) -> None:
    ids = make_tree(
        tmp_path,
        f"kubepods.slice/kubepods-{POD}.slice/cri-containerd-{CID}.scope",
        f"system.slice/docker-{OTHER}.scope",
        "system.slice/sshd.service",
    )
    resolver = ContainerResolver(root=str(tmp_path), clock=FakeClock())
    assert (
        resolver.container_id(
            ids[f"kubepods.slice/kubepods-{POD}.slice/cri-containerd-{CID}.scope"]
        )
        == CID
    )
    # The first scan cached every container: no second scan for the other one.
    assert resolver.container_id(ids[f"system.slice/docker-{OTHER}.scope"]) == OTHER
    assert resolver.counts.scans == 1 and resolver.counts.hits == 1
    assert resolver.container_id(cgroup_id_of(tmp_path)) == ""


def test_resolver_finds_a_container_started_just_after_a_scan(tmp_path: Path) -> None:
    """A scale-up: container B starts half a second after A was resolved. Its first
    events must name it, not "" (which would be published for good)."""
    clock = FakeClock()
    resolver = ContainerResolver(root=str(tmp_path), rescan_interval_s=1.0, clock=clock)
    a = f"kubepods.slice/cri-containerd-{CID}.scope"
    assert resolver.container_id(make_tree(tmp_path, a)[a]) == CID
    clock.now += 0.5
    b = f"kubepods.slice/cri-containerd-{OTHER}.scope"
    assert resolver.container_ids([make_tree(tmp_path, b)[b]]) == {
        cgroup_id_of(tmp_path / b): OTHER
    }
    assert resolver.counts.scans == 2


def test_resolver_on_a_crio_cgroupfs_pod(tmp_path: Path) -> None:
    """A CRI-O pod with the cgroupfs driver: sandbox, container and the container's
    conmon side by side in the pod cgroup; conmon is no container."""
    pod = f"kubepods/burstable/{POD.replace('_', '-')}"
    container, conmon, sandbox = (
        f"{pod}/crio-{CID}",
        f"{pod}/crio-conmon-{CID}",
        f"{pod}/crio-{OTHER}",
    )
    ids = make_tree(tmp_path, container, conmon, sandbox)
    resolver = ContainerResolver(root=str(tmp_path), clock=FakeClock())
    assert resolver.container_id(ids[conmon]) == ""
    assert resolver.container_id(ids[container]) == CID
    assert resolver.container_id(ids[sandbox]) == OTHER
    assert resolver.counts.scans == 1


def test_resolver_rescans_are_bounded_under_a_flood_of_unknown_ids(tmp_path: Path) -> None:
    clock = FakeClock()
    resolver = ContainerResolver(
        root=str(tmp_path), rescan_interval_s=1.0, rescan_burst=3, clock=clock
    )
    make_tree(tmp_path, "system.slice")
    assert all(resolver.container_id(999_000_000 + i) == "" for i in range(100))
    assert resolver.counts.scans == 3 and resolver.counts.throttled == 97
    late = make_tree(tmp_path, f"system.slice/crio-{CID}.scope")[f"system.slice/crio-{CID}.scope"]
    assert resolver.container_id(late) == ""  # budget spent: no scan
    clock.now += 1.0
    assert resolver.container_id(late) == CID  # a new interval: the scan finds it
    assert resolver.counts.scans == 4


def test_resolver_cache_is_bounded_lru(tmp_path: Path) -> None:
    paths = [f"docker/{i:064x}" for i in range(6)]
    ids = make_tree(tmp_path, *paths)
    clock = FakeClock()
    resolver = ContainerResolver(capacity=3, root=str(tmp_path), clock=clock)
    assert resolver.container_id(ids[paths[0]]) == f"{0:064x}"
    assert len(resolver._cache) == 3
    assert ids[paths[0]] in resolver._cache  # the asked-for id is kept even when full


def test_find_cgroup2_root_prefers_given_then_unified(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert find_cgroup2_root("/sys/fs/cgroup", str(mounts)) == "/sys/fs/cgroup/unified"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")
    assert find_cgroup2_root("/sys/fs/cgroup/", str(mounts)) == "/sys/fs/cgroup"
    mounts.write_text("cgroup2 /run/cg2 cgroup2 rw 0 0\n")
    assert find_cgroup2_root("/sys/fs/cgroup", str(mounts)) == "/run/cg2"
    mounts.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n")
    with pytest.raises(StartupError, match="cgroup2"):
        find_cgroup2_root("/sys/fs/cgroup", str(mounts))
