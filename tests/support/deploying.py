"""What deployment artefacts may refer to: flowscope subcommands and their settings.

The Dockerfile, docker-compose.yml and the Helm chart start containers with
``flowscope <command>`` and configure them with ``FLOWSCOPE_*`` variables; tests check
both against the CLI itself rather than a copied list.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from flowscope.cli import COMMANDS, build_parser
from flowscope.core.config import leaves

REPO = Path(__file__).resolve().parents[2]


def subcommands() -> set[str]:
    """The subcommands ``flowscope`` accepts, as its argument parser has them."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("flowscope has no subcommands")


def settings_class(command: str) -> type[Any]:
    return importlib.import_module(COMMANDS[command][0]).Settings  # type: ignore[no-any-return]


def env_names(command: str) -> set[str]:
    """Every ``FLOWSCOPE_*`` variable the settings of ``command`` read."""
    return {leaf.env for leaf in leaves(settings_class(command))} | {"FLOWSCOPE_CONFIG"}


def cap_eff(names: list[str]) -> int:
    """The CapEff mask of a container granted exactly ``names`` (``NET_ADMIN``, ...)."""
    from flowscope.collector import checks

    return sum(1 << getattr(checks, f"CAP_{name}") for name in names)


def shared_file(*parts: str) -> Path | None:
    """A file under the ``shared/`` directory beside the clone (CI), or beside the
    worktrees directory (a worktree at ``<work>/wt/<name>``); None when absent."""
    for base in (REPO.parent, REPO.parent.parent):
        candidate = base.joinpath("shared", *parts)
        if candidate.is_file():
            return candidate
    return None
