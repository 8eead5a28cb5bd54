"""The ``flowscope`` command: one subcommand per service, plus ``up``.

Settings are parsed here, at the edge, into each service's settings object; a bad
setting ends the process with one line naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from flowscope import __version__
from flowscope.core import config
from flowscope.core.errors import ConfigError, StartupError

# subcommand → (module with Settings, module with main, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "collector": (
        "flowscope.collector.settings",
        "flowscope.collector.service",
        "per-node eBPF flow, socket and DNS collector (needs root)",
    ),
    "enricher": (
        "flowscope.enricher.settings",
        "flowscope.enricher.service",
        "joins raw events with Kubernetes, process and DNS metadata",
    ),
    "exporter": (
        "flowscope.exporter.settings",
        "flowscope.exporter.service",
        "delivers enriched records to OTLP, Elasticsearch and stdout",
    ),
    "observe": (
        "flowscope.observe",
        "flowscope.observe",
        "live view of enriched flows from NATS, filtered (like hubble observe)",
    ),
    "up": (
        "flowscope.up",
        "flowscope.up",
        "the whole pipeline on this machine with embedded defaults (needs root)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = config.OneLineParser(
        prog="flowscope",
        description="Network-flow observability for Kubernetes, over eBPF and NATS.",
    )
    parser.add_argument("--version", action="version", version=f"flowscope {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=config.OneLineParser
    )
    for name, (settings_module, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        settings_cls = importlib.import_module(settings_module).Settings
        config.add_arguments(p, settings_cls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 2
        settings_module, main_module, _ = COMMANDS[ns.command]
        args: dict[str, Any] = {k: v for k, v in vars(ns).items() if k != "command"}
        settings = config.load(importlib.import_module(settings_module).Settings, args)
        return int(importlib.import_module(main_module).main(settings))
    except (ConfigError, StartupError) as e:
        print(f"flowscope: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
