"""The collector service: `flowscope collector`."""

from __future__ import annotations

from flowscope.collector.settings import Settings
from flowscope.core.errors import StartupError


def main(settings: Settings) -> int:
    """Run the collector until signalled; returns the exit status."""
    raise StartupError("collector", "not yet built")
