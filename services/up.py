"""``flowscope up``: the whole pipeline on this machine with embedded defaults."""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.core.config import section
from flowscope.core.errors import StartupError
from flowscope.core.runtime import RuntimeSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of ``flowscope up``."""

    runtime: RuntimeSettings = section(RuntimeSettings, "logs, HTTP endpoint, drain", flat=True)


def main(settings: Settings) -> int:
    raise StartupError("up", "not yet built")
