"""Start-up checks name what is missing (one line each, StartupError → exit 2)."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from flowscope.collector import checks
from flowscope.core.errors import StartupError


def host(tmp_path: Path, cap_eff: int = 0x1FFFFFFFFFF) -> checks.HostPaths:
    tmp_path.mkdir(parents=True, exist_ok=True)
    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapEff:\t{cap_eff:016x}\n")
    (tmp_path / "btf").write_text("")
    (tmp_path / "knob").write_text("2\n")
    for release in ("6.1.0", os.uname().release):
        (tmp_path / "modules" / release / "build" / "include").mkdir(parents=True, exist_ok=True)
    return checks.HostPaths(
        proc_status=status, btf=tmp_path / "btf", bpf_syscall_knob=tmp_path / "knob",
        modules=tmp_path / "modules",
    )  # fmt: skip


UNLIMITED = resource.RLIM_INFINITY
GRANTED = (1 << checks.CAP_NET_ADMIN | 1 << checks.CAP_SYS_ADMIN | 1 << checks.CAP_SYS_RESOURCE
           | 1 << checks.CAP_SYS_PTRACE)  # fmt: skip
# CapEff of a container given cap_drop ALL + cap_add NET_ADMIN, SYS_ADMIN: what the
# kernel reports for exactly those two bits.
REQUIRED_ONLY = 0x0000000000201000


def test_all_present_passes(tmp_path: Path) -> None:
    paths = host(tmp_path)
    checks.check_capabilities(paths, "6.1.0", 64 << 10)
    checks.check_bpf(paths)
    checks.check_kernel_headers(paths, "6.1.0", {})


def test_run_all_needs_no_tracefs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the collector loads attaches through tracefs (TC, cgroup hooks, fexit by
    BTF id): a host without it passes (tests/privileged/collector/test_no_tracefs.py
    loads the programs with tracefs unmounted)."""
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    checks.run_all(host(tmp_path))


def test_exactly_the_granted_capabilities_are_enough() -> None:
    assert checks.missing_capabilities(GRANTED, "5.4.0-150-generic", 64 << 10) == []
    assert checks.missing_capabilities(GRANTED, "6.8.0", 64 << 10) == []


def test_net_admin_and_sys_admin_are_required_on_every_kernel(tmp_path: Path) -> None:
    assert checks.missing_capabilities(REQUIRED_ONLY, "6.8.0", 64 << 10) == []
    with pytest.raises(StartupError, match=r"missing CAP_NET_ADMIN \(TC filters\)") as raised:
        checks.check_capabilities(host(tmp_path, 1 << checks.CAP_SYS_ADMIN), "6.8.0", UNLIMITED)
    assert "CAP_SYS_ADMIN" not in str(raised.value)
    missing = checks.missing_capabilities(1 << checks.CAP_NET_ADMIN, "6.8.0", UNLIMITED)
    assert [m.split()[0] for m in missing] == ["CAP_SYS_ADMIN"]
    missing = checks.missing_capabilities(0, "6.8.0", UNLIMITED)
    assert [m.split()[0] for m in missing] == ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]


def test_bpf_and_perfmon_do_not_replace_sys_admin() -> None:
    """The deployments grant CAP_SYS_ADMIN (which the kernel accepts for CAP_BPF and
    CAP_PERFMON, not the other way round): the narrower pair alone is refused."""
    cap_bpf, cap_perfmon = 39, 38
    cap_eff = 1 << checks.CAP_NET_ADMIN | 1 << cap_bpf | 1 << cap_perfmon
    missing = checks.missing_capabilities(cap_eff, "6.8.0", UNLIMITED)
    assert [m.split()[0] for m in missing] == ["CAP_SYS_ADMIN"]


@pytest.mark.parametrize(
    ("release", "memlock_hard", "needed"),
    [
        ("5.10.0-21-amd64", 64 << 10, True),  # charged to memlock, finite hard limit
        ("5.8.0", 8 << 20, True),
        ("5.10.0-21-amd64", UNLIMITED, False),  # bcc can raise the soft limit itself
        ("5.11.0", 64 << 10, False),  # charged to the memory cgroup instead
        ("6.8.0-45-generic", 64 << 10, False),
        ("weird", 64 << 10, True),  # unreadable release: treated as old
    ],
)
def test_sys_resource_only_where_memlock_limits_bpf_maps(
    release: str, memlock_hard: int, needed: bool
) -> None:
    missing = checks.missing_capabilities(REQUIRED_ONLY, release, memlock_hard)
    assert [m.split()[0] for m in missing] == (["CAP_SYS_RESOURCE"] if needed else [])


def test_missing_sys_resource_is_one_line_naming_kernel_and_limit(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as raised:
        checks.check_capabilities(host(tmp_path, REQUIRED_ONLY), "5.10.0-21-amd64", 65536)
    message = str(raised.value)
    assert "\n" not in message
    assert "CAP_SYS_RESOURCE" in message and "5.10" in message
    assert "RLIMIT_MEMLOCK" in message and "65536" in message


def test_sys_ptrace_is_not_required(tmp_path: Path) -> None:
    """Without CAP_SYS_PTRACE the collector starts; the socket snapshot warns instead."""
    without_ptrace = GRANTED & ~(1 << checks.CAP_SYS_PTRACE)
    checks.check_capabilities(host(tmp_path, without_ptrace), "5.10.0", 64 << 10)


def test_kernel_version() -> None:
    assert checks.kernel_version("5.10.0-21-amd64") == (5, 10)
    assert checks.kernel_version("6.12.3+deb13") == (6, 12)
    assert checks.kernel_version("") == (0, 0)


def test_no_btf(tmp_path: Path) -> None:
    paths = host(tmp_path)
    paths.btf.unlink()
    with pytest.raises(StartupError, match="BTF"):
        checks.check_bpf(paths)


def test_kernel_headers_missing(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"kernel headers not found .*6\.9\.9"):
        checks.check_kernel_headers(host(tmp_path), "6.9.9", {})
    with pytest.raises(StartupError, match="BCC_KERNEL_SOURCE"):
        checks.check_kernel_headers(host(tmp_path / "x"), "6.1.0", {"BCC_KERNEL_SOURCE": "/nope"})
