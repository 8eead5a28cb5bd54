"""The HTTP endpoint on every address when IPv6 is switched off or missing from the kernel.

Each case runs a child Python that starts :func:`flowscope.core.serving.start` on ``:0``
and probes its own ``/healthz`` over 127.0.0.1 and ::1: once in a new network namespace
with ``net.ipv6.conf.all.disable_ipv6=1`` (a node or pod with IPv6 turned off), once
under a seccomp filter that fails ``socket(AF_INET6, …)`` with EAFNOSUPPORT, which is
what a kernel booted with ``ipv6.disable=1`` answers. Needs root (unshare, sysctl).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]  # the child imports tests.support from here
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare and sysctl")

CHILD = r"""
import asyncio, ctypes, json, socket, struct, sys
from flowscope.core import serving
from prometheus_client import CollectorRegistry
from tests.support.probing import healthz

# seccomp: socket(AF_INET6, ...) -> EAFNOSUPPORT, everything else allowed.
ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}

def no_ipv6_sockets(machine):
    arch, nr_socket = ARCH[machine]
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, refuse = 0x7FFF0000, 0x00050000 | 97  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO|EAFNOSUPPORT
    program = [
        (ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, allow),  # seccomp_data.arch
        (ld, 0, 0, 0), (jeq, 0, 3, nr_socket),  # nr
        (ld, 0, 0, 16), (jeq, 0, 1, socket.AF_INET6),  # args[0], low 32 bits
        (ret, 0, 0, refuse), (ret, 0, 0, allow),
    ]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # pointers are 64-bit
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    fbuf = ctypes.create_string_buffer(fprog)
    assert libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) == 0, ctypes.get_errno()

async def main():
    runner, port = await serving.start(":0", CollectorRegistry(), serving.Health())
    try:
        return {h: await asyncio.to_thread(healthz, h, port) for h in ("127.0.0.1", "::1")}
    finally:
        await runner.cleanup()

if sys.argv[1] == "seccomp":
    no_ipv6_sockets(sys.argv[2])
print(json.dumps(asyncio.run(main())))
"""


def run_child(prefix: list[str], *args: str) -> dict[str, bool]:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CHILD, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, bool] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_every_address_serves_ipv4_where_ipv6_is_disabled() -> None:
    setup = (
        "ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
        'net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.lo.disable_ipv6=1 && exec "$@"'
    )
    result = run_child(["unshare", "--net", "sh", "-c", setup, "sh"], "netns")
    assert result == {"127.0.0.1": True, "::1": False}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="seccomp numbers")
def test_every_address_falls_back_to_ipv4_without_ipv6_in_the_kernel() -> None:
    result = run_child([], "seccomp", platform.machine())
    assert result == {"127.0.0.1": True, "::1": False}
