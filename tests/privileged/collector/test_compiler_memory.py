"""After compiling, the compiler's code and heap leave the process; compiling still works."""

from __future__ import annotations

import re
from pathlib import Path

from flowscope.collector.loading import (
    FlowProgramConfig,
    load_flow_program,
    release_compiler_memory,
)


def rss_file_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssFile:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def test_release_drops_compiler_code_and_a_later_compile_still_works() -> None:
    program = load_flow_program(FlowProgramConfig(max_flows=1024))
    try:
        before = rss_file_kb()
        dropped = release_compiler_memory()
        after = rss_file_kb()
        assert dropped > 10 << 20  # libLLVM and libclang-cpp text: tens of MB
        assert before - after > 10 << 10  # ... and it left this process's RSS (kB)
        assert release_compiler_memory() >= 0  # idempotent
        # The program keeps working: its fds do not depend on the compiler's pages.
        assert len(program.bpf[b"flows_a"]) == 0
    finally:
        program.close()
    # The dropped code pages come back from the library file when compiling again.
    again = load_flow_program(FlowProgramConfig(max_flows=1024))
    again.close()
