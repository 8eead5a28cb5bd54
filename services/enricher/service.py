"""The enricher service: `flowscope enricher`."""

from __future__ import annotations

from flowscope.enricher.settings import Settings
from flowscope.core.errors import StartupError


def main(settings: Settings) -> int:
    """Run the enricher until signalled; returns the exit status."""
    raise StartupError("enricher", "not yet built")
