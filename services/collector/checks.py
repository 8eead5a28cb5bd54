"""Start-up checks: each failure is one clear line and exit status 2 (StartupError).

Paths, the kernel release and the memlock limit are parameters so the checks can be
exercised against crafted inputs; the service calls :func:`run_all` with the real ones.

Of the five capabilities the deployments grant (docs/collector.md), CAP_NET_ADMIN and
CAP_SYS_ADMIN are always required and CAP_SYS_RESOURCE only where the kernel needs it
(:func:`missing_capabilities`). CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are optional: the
socket snapshot (:mod:`flowscope.collector.socket_snapshotting`) needs them and, without
them, logs one warning and skips itself (or the processes of other users) instead of
stopping the collector.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from flowscope.core.errors import StartupError

# Capability numbers (linux/capability.h).
CAP_DAC_READ_SEARCH = 2  # optional: the socket snapshot lists other users' fds with it
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19  # optional: checked by the socket snapshot, which warns and skips
CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24
# Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK (later: to the memory cgroup).
MEMLOCK_CHARGED_BEFORE = (5, 11)


@dataclass(frozen=True, slots=True)
class HostPaths:
    """Where the checks look (the real host by default)."""

    proc_status: Path = Path("/proc/self/status")
    btf: Path = Path("/sys/kernel/btf/vmlinux")
    bpf_syscall_knob: Path = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
    modules: Path = Path("/lib/modules")


def effective_capabilities(status: Path) -> int:
    """CapEff of /proc/self/status as a bit mask."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise StartupError("capabilities", f"no CapEff line in {status}")


def kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release such as ``5.10.0-21-amd64``; (0, 0) when it
    cannot be read, so an odd release string is treated as an old kernel (the cautious
    side: the memlock limit is then checked)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def missing_capabilities(cap_eff: int, release: str, memlock_hard: int) -> list[str]:
    """Capabilities the collector lacks, each with why it is needed (empty: enough).

    CAP_NET_ADMIN attaches the TC programs. CAP_SYS_ADMIN covers loading BPF, the cgroup
    programs of socket tracing and its optional fexit program (the kernel's bpf_capable()
    and perfmon_capable() accept it in place of CAP_BPF and CAP_PERFMON). CAP_SYS_RESOURCE is
    needed only where the kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11) and the
    hard limit is finite: bcc raises the limit to unlimited before creating maps.
    ``memlock_hard`` is the RLIMIT_MEMLOCK hard limit (``resource.RLIM_INFINITY``: none).
    """

    def has(cap: int) -> bool:
        return bool(cap_eff >> cap & 1)

    missing = [] if has(CAP_NET_ADMIN) else ["CAP_NET_ADMIN (TC filters)"]
    if not has(CAP_SYS_ADMIN):
        missing.append("CAP_SYS_ADMIN (BPF programs, cgroup hooks)")
    version = kernel_version(release)
    if (
        version < MEMLOCK_CHARGED_BEFORE
        and memlock_hard != resource.RLIM_INFINITY
        and not has(CAP_SYS_RESOURCE)
    ):
        missing.append(
            f"CAP_SYS_RESOURCE (kernel {version[0]}.{version[1]} charges BPF maps to "
            f"RLIMIT_MEMLOCK, whose hard limit is {memlock_hard} bytes, not unlimited)"
        )
    return missing


def check_capabilities(paths: HostPaths, release: str, memlock_hard: int) -> None:
    cap_eff = effective_capabilities(paths.proc_status)
    missing = missing_capabilities(cap_eff, release, memlock_hard)
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
    """Every start-up check, in the order a user would fix them.

    No tracefs check: nothing the collector loads attaches through it (TC and cgroup
    programs, and the optional fexit program, which bcc attaches by BTF id with
    ``BPF_RAW_TRACEPOINT_OPEN``; there are no tracepoints or kprobes).
    """
    paths = paths or HostPaths()
    release = os.uname().release
    check_capabilities(paths, release, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1])
    check_bpf(paths)
    check_kernel_headers(paths, release, dict(os.environ))
