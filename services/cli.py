"""The ``flowscope`` command: one subcommand per service, plus ``up``.

Settings are parsed here, at the edge, into each service's settings object; a bad
setting ends the process with one line naming it and exit status 2; a Ctrl-C before the
command handles signals itself, one line and exit status 130.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
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


# Variables Kubernetes sets for each Service of the pod's namespace (service links): a
# Service named flowscope-nats gives FLOWSCOPE_NATS_SERVICE_HOST, FLOWSCOPE_NATS_PORT, ...
_SERVICE_LINK = re.compile(
    r"_SERVICE_HOST$|_SERVICE_PORT(_\w+)?$|_PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?$"
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One line per ``FLOWSCOPE_*`` variable that no command reads (a misspelt setting
    would otherwise leave its default in force without a word), naming the nearest
    setting's variable when one is close."""
    known = frozenset().union(
        *(config.variables(importlib.import_module(m).Settings) for m, _, _ in COMMANDS.values())
    )
    prefix = config.ENV_PREFIX
    suffixes = [name[len(prefix) :] for name in known]
    lines = []
    for name in sorted(env):
        if not name.startswith(prefix) or name in known:
            continue
        if _SERVICE_LINK.search(name):
            continue
        near = difflib.get_close_matches(name[len(prefix) :], suffixes, n=1, cutoff=0.75)
        hint = f"; did you mean {prefix}{near[0]}?" if near else ""
        lines.append(f"{name} is not a flowscope setting and is ignored{hint}")
    return lines


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
        for line in unknown_variables(os.environ):
            print(f"flowscope: warning: {line}", file=sys.stderr)
        return int(importlib.import_module(main_module).main(settings))
    except (ConfigError, StartupError) as e:
        print(f"flowscope: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C before the command handles it itself (imports, settings, `up` until its
        # signal handlers are in place): nothing runs yet, so one line, no traceback, and
        # the status a shell gives an interrupted command.
        print("flowscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
