"""The exporter service: `flowscope exporter`."""

from __future__ import annotations

from flowscope.core.errors import StartupError
from flowscope.exporter.settings import Settings


def main(settings: Settings) -> int:
    """Run the exporter until signalled; returns the exit status."""
    raise StartupError("exporter", "not yet built")
