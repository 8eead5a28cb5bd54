"""The enricher service: `flowscope enricher`."""

from __future__ import annotations

from flowscope.core.errors import StartupError
from flowscope.enricher.settings import Settings


def main(settings: Settings) -> int:
    """Run the enricher until signalled; returns the exit status."""
    raise StartupError("enricher", "not yet built")
