"""Attaching BPF programs to a cgroup as BPF links, and finding what is attached.

bcc's ``attach_func`` uses ``bpf_prog_attach``: such an attachment outlives the process
and would keep running after a crash. A BPF link (``bpf_link_create``) is owned by its
file descriptor, so the kernel detaches it when the process exits, however it exits.
libbcc links libbpf, whose functions are reached here through bcc's own ctypes handle.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from bcc.libbcc import lib

_lib = lib
_lib.bpf_link_create.restype = ctypes.c_int
_lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
_lib.bpf_prog_query.restype = ctypes.c_int
_lib.bpf_prog_query.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.POINTER(ctypes.c_uint32),
    ctypes.POINTER(ctypes.c_uint32),
]
_lib.bpf_prog_get_fd_by_id.restype = ctypes.c_int
_lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
_lib.bpf_obj_get_info_by_fd.restype = ctypes.c_int
_lib.bpf_obj_get_info_by_fd.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
]
_lib.bpf_prog_detach2.restype = ctypes.c_int
_lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]

MAX_QUERY = 64  # programs per attach type a query returns (the kernel allows 64)


class ProgInfo(ctypes.Structure):
    """The leading part of ``struct bpf_prog_info`` (UAPI, append-only): up to ``name``."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True, slots=True)
class Attached:
    """One program attached to a cgroup for one attach type."""

    attach_type: int
    prog_id: int
    name: str


def _errno(result: int) -> int:
    """libbpf returns -errno (and sets errno); normalise to a positive errno."""
    return -result if result < 0 else ctypes.get_errno()


def link_create(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Attach a loaded program to a cgroup as a link; returns the link's fd.

    Links always share the cgroup with other programs (multi-attach semantics).
    """
    fd = _lib.bpf_link_create(prog_fd, cgroup_fd, attach_type, None)
    if fd < 0:
        raise OSError(_errno(fd), os.strerror(_errno(fd)))
    return fd


def prog_info(prog_fd: int) -> ProgInfo:
    """Id, name and type of a loaded program."""
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    result = _lib.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    if result < 0:
        raise OSError(_errno(result), os.strerror(_errno(result)))
    return info


def attached(cgroup_fd: int, attach_type: int) -> list[Attached]:
    """Programs attached directly to this cgroup for ``attach_type`` (not inherited)."""
    ids = (ctypes.c_uint32 * MAX_QUERY)()
    count = ctypes.c_uint32(MAX_QUERY)
    flags = ctypes.c_uint32(0)
    result = _lib.bpf_prog_query(cgroup_fd, attach_type, 0, flags, ids, count)
    if result < 0:
        raise OSError(_errno(result), os.strerror(_errno(result)))
    return [Attached(attach_type, ids[i], _name_of(ids[i])) for i in range(count.value)]


def _name_of(prog_id: int) -> str:
    fd = _lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""  # unloaded between the query and now
    try:
        return prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def detach_by_name(cgroup_fd: int, attach_type: int, prefix: str) -> int:
    """Detach programs named ``prefix…`` attached with bpf_prog_attach; returns how many.

    Link attachments refuse this (their owner's fd controls them), so the programs of a
    live process using links are left alone.
    """
    removed = 0
    for entry in attached(cgroup_fd, attach_type):
        if not entry.name.startswith(prefix):
            continue
        fd = _lib.bpf_prog_get_fd_by_id(entry.prog_id)
        if fd < 0:
            continue
        try:
            if _lib.bpf_prog_detach2(fd, cgroup_fd, attach_type) == 0:
                removed += 1
        finally:
            os.close(fd)
    return removed
