"""Which mappings release_compiler_memory may drop: compiler code, never written pages."""

from __future__ import annotations

from flowscope.collector.loading import compiler_code_mappings

SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                1024 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000100000-7f0003000000 r-xp 00100000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Size:              48128 kB
Rss:               47000 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0004000000-7f0005000000 r-xp 00100000 08:01 12 /usr/lib/llvm-14/lib/libclang-cpp.so.14
Rss:               26000 kB
Anonymous:             4 kB
VmFlags: rd ex mr mw me sd
7f0006000000-7f0007000000 r-xp 00000000 08:01 13 /usr/lib/llvm-17/lib/libclang-cpp.so.17
Rss:               20000 kB
Anonymous:             0 kB
7f0008000000-7f0008100000 r-xp 00000000 08:01 14 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
Rss:                1500 kB
Anonymous:             0 kB
7f0009000000-7f0009100000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f000a000000-7f000a100000 rw-p 00200000 08:01 11 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
Rss:                  64 kB
Anonymous:            64 kB
"""


def test_only_unwritten_executable_compiler_mappings_are_chosen() -> None:
    assert compiler_code_mappings(SMAPS) == [
        (0x7F0000100000, 0x7F0003000000),  # libLLVM text
        (0x7F0006000000, 0x7F0007000000),  # libclang-cpp text (another version)
    ]  # not: read-only data (RELRO), a text mapping with a COW page, libbcc, anonymous, data


def test_nothing_found_in_empty_or_odd_input() -> None:
    assert compiler_code_mappings("") == []
    assert compiler_code_mappings("garbage\nAnonymous: 0 kB\n") == []
