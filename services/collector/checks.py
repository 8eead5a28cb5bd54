"""Start-up checks: each failure is one clear line and exit status 2 (StartupError).

Paths are parameters so the checks can be exercised against crafted files; the service
calls :func:`run_all` with the real ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flowscope.core.errors import StartupError

# Capability numbers (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19  # optional: the socket snapshot reads other processes' fds
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
CAP_PERFMON = 38
CAP_BPF = 39
CAP_NAMES = {
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_SYS_RESOURCE: "CAP_SYS_RESOURCE",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}


@dataclass(frozen=True, slots=True)
class HostPaths:
    """Where the checks look (the real host by default)."""

    proc_status: Path = Path("/proc/self/status")
    btf: Path = Path("/sys/kernel/btf/vmlinux")
    bpf_syscall_knob: Path = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
    tracefs: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
    modules: Path = Path("/lib/modules")


def effective_capabilities(status: Path) -> int:
    """CapEff of /proc/self/status as a bit mask."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise StartupError("capabilities", f"no CapEff line in {status}")


def missing_capabilities(cap_eff: int) -> list[str]:
    """Capabilities the collector lacks, by name (empty: enough).

    Attaching TC programs needs CAP_NET_ADMIN. Loading BPF and reading kernel time and
    tracepoints needs CAP_BPF + CAP_PERFMON (kernel ≥ 5.8), or CAP_SYS_ADMIN, which also
    covers older kernels and the cgroup attachments of socket tracing.
    """

    def has(cap: int) -> bool:
        return bool(cap_eff >> cap & 1)

    missing = [] if has(CAP_NET_ADMIN) else ["CAP_NET_ADMIN"]
    if not has(CAP_SYS_ADMIN):
        missing += [CAP_NAMES[c] for c in (CAP_BPF, CAP_PERFMON) if not has(c)]
        missing += ["CAP_SYS_ADMIN"]  # socket tracing attaches cgroup programs
    return missing


def check_capabilities(paths: HostPaths) -> None:
    missing = missing_capabilities(effective_capabilities(paths.proc_status))
    if missing:
        raise StartupError(
            "capabilities",
            f"missing {', '.join(missing)} (run as root or grant them to the container)",
        )


def check_bpf(paths: HostPaths) -> None:
    if not paths.bpf_syscall_knob.exists():
        raise StartupError("bpf", "the kernel has no BPF syscall (CONFIG_BPF_SYSCALL)")
    if not paths.btf.exists():
        raise StartupError("btf", f"no kernel BTF at {paths.btf} (CONFIG_DEBUG_INFO_BTF)")


def check_tracefs(paths: HostPaths) -> None:
    if not any((p / "events").is_dir() for p in paths.tracefs):
        raise StartupError(
            "tracefs",
            f"tracefs is not mounted at {paths.tracefs[0]} "
            "(mount -t tracefs nodev /sys/kernel/tracing, or mount the host's /sys)",
        )


def check_kernel_headers(paths: HostPaths, release: str, env: dict[str, str]) -> None:
    if env.get("BCC_KERNEL_SOURCE"):
        source = Path(env["BCC_KERNEL_SOURCE"])
        if (source / "include").is_dir():
            return
        raise StartupError("kernel-headers", f"BCC_KERNEL_SOURCE={source} has no include/")
    build = paths.modules / release / "build"
    if not (build / "include").is_dir():
        raise StartupError(
            "kernel-headers",
            f"kernel headers not found at {build} (install linux-headers for {release}, "
            "or mount them from the host)",
        )


def run_all(paths: HostPaths | None = None) -> None:
    """Every start-up check, in the order a user would fix them."""
    paths = paths or HostPaths()
    check_capabilities(paths)
    check_bpf(paths)
    check_tracefs(paths)
    check_kernel_headers(paths, os.uname().release, dict(os.environ))
