"""Compile and load bpf/flows.c with bcc; constants travel as -D flags, never as text edits."""

from __future__ import annotations

import contextlib
import ctypes
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from flowscope.collector import abi
from flowscope.collector.cache_reading import FlowCache, possible_cpus
from flowscope.core.errors import StartupError

log = logging.getLogger("flowscope.collector.loading")

INGRESS_FUNC = "flowscope_ingress"
EGRESS_FUNC = "flowscope_egress"
# Variants for devices without an Ethernet header (tun, WireGuard, IP-in-IP).
INGRESS_IP_FUNC = "flowscope_ingress_ip"
EGRESS_IP_FUNC = "flowscope_egress_ip"
# How many UDP tunnel ports bpf/flows.c compares with (TUNNEL_PORT_0 .. 3).
TUNNEL_PORTS = 4


@dataclass(frozen=True, slots=True)
class FlowProgramConfig:
    """The compile-time constants of the flow program."""

    max_flows: int = 65536
    cache_slots: int = 1024  # flow cache slots per half per CPU; 0: no cache
    dns_port: int = 53
    dns_capture_len: int = 512
    dns_ringbuf_pages: int = 64
    tunnel_ports: tuple[int, ...] = (4789, 8472, 6081)  # at most TUNNEL_PORTS

    def cflags(self) -> list[str]:
        if len(self.tunnel_ports) > TUNNEL_PORTS:
            raise ValueError(f"at most {TUNNEL_PORTS} tunnel ports")
        ports = self.tunnel_ports + (0,) * (TUNNEL_PORTS - len(self.tunnel_ports))
        return [
            f"-I{bpf_dir()}",
            f"-DMAX_FLOWS={self.max_flows}",
            f"-DFLOW_CACHE_SLOTS={self.cache_slots}",
            f"-DDNS_PORT={self.dns_port}",
            f"-DDNS_CAPTURE_LEN={self.dns_capture_len}",
            f"-DDNS_RINGBUF_PAGES={self.dns_ringbuf_pages}",
            *(f"-DTUNNEL_PORT_{i}={port}" for i, port in enumerate(ports)),
        ]


@dataclass(slots=True)
class FlowProgram:
    """The loaded flow program: bcc object, the two TC program fds and its tables."""

    bpf: Any
    ingress_fd: int
    egress_fd: int
    config: FlowProgramConfig
    ingress_ip_fd: int = -1
    egress_ip_fd: int = -1
    # User space's side of the per-CPU flow cache; None when compiled without it.
    cache: FlowCache | None = None

    @property
    def flows(self) -> Any:
        """The outer array of the two flow maps (bpf/flows.c, ``flows``)."""
        return self.bpf[b"flows"]

    @property
    def counters(self) -> Any:
        return self.bpf[b"counters"]

    @property
    def clock_pair(self) -> Any:
        return self.bpf[b"clock_pair"]

    @property
    def dns_events(self) -> Any:
        return self.bpf[b"dns_events"]

    def close(self) -> None:
        """Close the program and map fds (filters must be removed first: attaching.py)."""
        if self.cache is not None:
            self.cache.close()
        self.bpf.cleanup()


def bpf_dir() -> Path:
    """Directory of the shipped C sources (package ``flowscope.bpf``)."""
    return Path(str(resources.files("flowscope.bpf")))


def load_flow_program(config: FlowProgramConfig) -> FlowProgram:
    """Compile bpf/flows.c, load both TC programs and check the ABI; StartupError on failure."""
    try:
        from bcc import BPF
    except ImportError as e:
        raise StartupError("bcc", "python3-bpfcc is not importable") from e
    src = bpf_dir() / "flows.c"
    try:
        bpf = BPF(src_file=str(src).encode(), cflags=config.cflags())
        fds = [bpf.load_func(f.encode(), BPF.SCHED_CLS).fd for f in (
            INGRESS_FUNC, EGRESS_FUNC, INGRESS_IP_FUNC, EGRESS_IP_FUNC)]  # fmt: skip
    except Exception as e:  # bcc raises bare Exception for compile and verifier errors
        raise StartupError("bpf", f"cannot compile or load {src.name}: {e}") from e
    program = FlowProgram(bpf, fds[0], fds[1], config, fds[2], fds[3])
    try:
        check_abi(program)
        set_up_flow_maps(program)
        if config.cache_slots:
            program.cache = FlowCache(
                bpf[b"flow_cache"].map_fd,
                bpf[b"flow_cache_generation"].map_fd,
                config.cache_slots,
                possible_cpus(),
            )
    except (StartupError, OSError) as e:
        program.close()
        if isinstance(e, OSError):
            raise StartupError("bpf", f"cannot map the flow cache's generation: {e}") from e
        raise
    log.info(
        "flow program loaded",
        extra={"max_flows": config.max_flows, "cache_slots": config.cache_slots},
    )
    return program


def release_compiler_memory(smaps: str = "/proc/self/smaps") -> int:
    """Give back the memory compiling took; returns the bytes of compiler code dropped.

    bcc compiles in-process, which leaves two things resident for good: the heap LLVM
    freed (about 45 MB after the flow and socket programs; glibc ``malloc_trim`` returns
    it), and the LLVM and clang machine code that ran (~75 MB of ``libLLVM``/
    ``libclang-cpp`` text), which nothing executes again once the programs are loaded.
    That code is dropped from this process with ``madvise(MADV_DONTNEED)``; should it
    run again (another compile) the kernel pages it back in from the library file.
    Only executable, private mappings with no copied-on-write page (``Anonymous: 0``)
    are touched, where dropping a page can only mean reading the same bytes back.
    Best effort: a no-op where glibc or /proc is missing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    dropped = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mappings = compiler_code_mappings(Path(smaps).read_text())
    except (OSError, AttributeError):
        return 0
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, end in mappings:
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
    log.info("compiler memory released", extra={"compiler_code_bytes": dropped})
    return dropped


MADV_DONTNEED = 4
COMPILER_LIBRARIES = ("libLLVM", "libclang")


def compiler_code_mappings(smaps: str) -> list[tuple[int, int]]:
    """(start, end) of the LLVM/clang code mappings that are safe to drop, from smaps text.

    Safe: executable, private, file-backed by a compiler library, and without an
    anonymous (copied-on-write) page, so the file holds exactly what is mapped.
    """
    found: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for line in smaps.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            current = None
            path = fields[5] if len(fields) > 5 else ""
            if fields[1] == "r-xp" and Path(path).name.startswith(COMPILER_LIBRARIES):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = (start, end)
        elif current is not None and fields[:1] == ["Anonymous:"]:
            if fields[1] == "0":
                found.append(current)
            current = None
    return found


FLOW_MAPS = (b"flows_a", b"flows_b")


def set_up_flow_maps(program: FlowProgram) -> None:
    """Fill the outer array ``flows``: the first map active (slot 0), both maps in slots
    1 and 2 for :class:`~flowscope.collector.draining.BatchReader` to find. Before any
    attach: until then the programs find no map and count packets as lost."""
    outer = program.flows
    first, second = (program.bpf[name].map_fd for name in FLOW_MAPS)
    try:
        for slot, fd in ((1, first), (2, second), (0, first)):
            outer[ctypes.c_int(slot)] = ctypes.c_int(fd)
    except Exception as e:  # bcc raises bare Exception when an update fails
        raise StartupError("bpf", f"cannot set up the flow maps: {e}") from e


def check_abi(program: FlowProgram) -> None:
    """Compare every kernel-boundary struct of the compiled program with abi.py."""
    for name in FLOW_MAPS:
        table = program.bpf[name]
        abi.check_layout("struct flow_key", abi.FlowKey, table.Key)
        abi.check_layout("struct flow_value", abi.FlowValue, table.Leaf)
    abi.check_layout(
        "struct collector_counters", abi.CollectorCounters, program.counters.Leaf._type_
    )
    abi.check_layout("struct clock_pair", abi.ClockPair, program.clock_pair.Leaf)
    if program.config.cache_slots:
        leaf = program.bpf[b"flow_cache"].Leaf
        abi.check_layout("struct flow_cache_slot", abi.FlowCacheSlot, leaf._type_)
    abi.check_layout(
        "struct dns_event",
        abi.dns_event_type(program.config.dns_capture_len),
        program.bpf[b"dns_event_layout"].Leaf,
    )
