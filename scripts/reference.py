#!/usr/bin/env python3
"""Generate the README's configuration and metrics reference from the code.

    .venv/bin/python scripts/reference.py --write   # rewrite README.md between the markers
    .venv/bin/python scripts/reference.py --check   # exit 1 when README.md is stale

Settings come from each command's settings class (every flag, environment variable,
default and doc); metrics from each service's catalogue (`flowscope.<svc>.metrics`,
a dataclass with ``create(registry)``) plus the NATS metrics every service has.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

from flowscope.cli import COMMANDS
from flowscope.core import config
from flowscope.core.messaging import NatsMetrics
from prometheus_client import CollectorRegistry

README = Path(__file__).resolve().parents[1] / "README.md"
MARKERS = {
    "settings": ("<!-- settings:begin -->", "<!-- settings:end -->"),
    "metrics": ("<!-- metrics:begin -->", "<!-- metrics:end -->"),
}
SERVICES = ("collector", "enricher", "exporter")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_reference() -> str:
    out = []
    for name, (settings_module, _, help_text) in COMMANDS.items():
        cls = importlib.import_module(settings_module).Settings
        out.append(f"#### `flowscope {name}` — {help_text}\n")
        out.append("| flag | environment variable | default | meaning |")
        out.append("|---|---|---|---|")
        for flag, env, default, doc in config.describe(cls):
            shown = f"`{_cell(default)}`" if default else ""
            named = f"`{flag}`" if flag.startswith("--") else flag  # "(no flag: secret)"
            out.append(f"| {named} | `{env}` | {shown} | {_cell(doc)} |")
        out.append("")
    return "\n".join(out)


def _catalogues(service: str) -> list[type]:
    module = importlib.import_module(f"flowscope.{service}.metrics")
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and dataclasses.is_dataclass(cls)
        and hasattr(cls, "create")
    ]


def _families(catalogues: list[type]) -> list[tuple[str, str, str]]:
    registry = CollectorRegistry()
    for cls in catalogues:
        cls.create(registry)  # type: ignore[attr-defined]
    rows = []
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((name, family.type, family.documentation))
    return sorted(rows)


def metrics_reference() -> str:
    out = []
    groups = [(s, _catalogues(s)) for s in SERVICES] + [("every service", [NatsMetrics])]
    for title, catalogues in groups:
        out.append(f"#### {title}\n")
        out.append("| metric | type | meaning |")
        out.append("|---|---|---|")
        for name, kind, doc in _families(catalogues):
            out.append(f"| `{name}` | {kind} | {_cell(doc)} |")
        out.append("")
    return "\n".join(out)


def render(readme: str) -> str:
    for key, text in (("settings", settings_reference()), ("metrics", metrics_reference())):
        begin, end = MARKERS[key]
        head, _, rest = readme.partition(begin)
        _, _, tail = rest.partition(end)
        readme = f"{head}{begin}\n{text}\n{end}{tail}"
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    current = README.read_text()
    wanted = render(current)
    if args.write:
        README.write_text(wanted)
        return 0
    if args.check and wanted != current:
        print("README.md reference is stale: run scripts/reference.py --write", file=sys.stderr)
        return 1
    if not args.check:
        print(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
