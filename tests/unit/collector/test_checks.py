"""Start-up checks name what is missing (one line each, StartupError → exit 2)."""

from __future__ import annotations

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
    (tmp_path / "tracing" / "events").mkdir(parents=True)
    (tmp_path / "modules" / "6.1.0" / "build" / "include").mkdir(parents=True)
    return checks.HostPaths(
        proc_status=status, btf=tmp_path / "btf", bpf_syscall_knob=tmp_path / "knob",
        tracefs=(tmp_path / "tracing",), modules=tmp_path / "modules",
    )  # fmt: skip


def test_all_present_passes(tmp_path: Path) -> None:
    paths = host(tmp_path)
    checks.check_capabilities(paths)
    checks.check_bpf(paths)
    checks.check_tracefs(paths)
    checks.check_kernel_headers(paths, "6.1.0", {})


def test_missing_capabilities_are_named(tmp_path: Path) -> None:
    only_net_admin = 1 << checks.CAP_NET_ADMIN
    with pytest.raises(StartupError, match="CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN"):
        checks.check_capabilities(host(tmp_path, only_net_admin))
    assert checks.missing_capabilities(1 << checks.CAP_SYS_ADMIN) == ["CAP_NET_ADMIN"]
    assert checks.missing_capabilities(0) == [
        "CAP_NET_ADMIN",
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
    ]


def test_no_btf(tmp_path: Path) -> None:
    paths = host(tmp_path)
    paths.btf.unlink()
    with pytest.raises(StartupError, match="BTF"):
        checks.check_bpf(paths)


def test_tracefs_not_mounted(tmp_path: Path) -> None:
    paths = host(tmp_path)
    (tmp_path / "tracing" / "events").rmdir()
    with pytest.raises(StartupError, match="tracefs is not mounted"):
        checks.check_tracefs(paths)


def test_kernel_headers_missing(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"kernel headers not found .*6\.9\.9"):
        checks.check_kernel_headers(host(tmp_path), "6.9.9", {})
    with pytest.raises(StartupError, match="BCC_KERNEL_SOURCE"):
        checks.check_kernel_headers(host(tmp_path / "x"), "6.1.0", {"BCC_KERNEL_SOURCE": "/nope"})
