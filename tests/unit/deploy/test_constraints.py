"""scripts/constraints.txt: the versions CI and a fresh machine install (bootstrap, Dockerfile).

Each pin must satisfy pyproject.toml's range for it (or a user installing from pyproject
gets something the tests never ran), every direct dependency must be pinned, and the
environment these tests run in must be the pinned one (a package upgraded by hand
without refreshing the file fails here, not on a fresh machine later).
"""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.deploying import REPO

CONSTRAINTS = REPO / "scripts" / "constraints.txt"


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"constraints.txt:{number}: not name==version: {line!r}"
        key = canonicalize_name(name)
        assert key not in found, f"constraints.txt:{number}: {name} pinned twice"
        found[key] = Version(version)
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_each_dependency_is_pinned_inside_its_range(requirement: Requirement) -> None:
    pinned = pins().get(canonicalize_name(requirement.name))
    assert pinned is not None, f"{requirement.name} is not in scripts/constraints.txt"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"constraints.txt pins {requirement.name}=={pinned}, outside pyproject's {requirement}"
    )


def test_the_tests_run_with_the_pinned_versions() -> None:
    differ = []
    for name, pinned in sorted(pins().items()):
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            differ.append(f"{name}: pinned {pinned}, not installed")
            continue
        if installed != pinned:
            differ.append(f"{name}: pinned {pinned}, installed {installed}")
    assert not differ, "refresh scripts/constraints.txt or re-run scripts/bootstrap: " + "; ".join(
        differ
    )
