"""README's configuration and metrics reference is generated from the code and current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_reference_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_every_setting_appears_in_readme() -> None:
    import importlib

    from flowscope.cli import COMMANDS
    from flowscope.core import config

    readme = (ROOT / "README.md").read_text()
    for settings_module, _, _ in COMMANDS.values():
        for leaf in config.leaves(importlib.import_module(settings_module).Settings):
            assert f"`{leaf.env}`" in readme, leaf.env
