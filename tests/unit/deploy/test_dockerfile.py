"""deploy/Dockerfile: it cannot be built here (no Docker engine), so check what can be:
the files it copies exist, the entry point is the real CLI, the final stage is lean and
non-root, and its HEALTHCHECK command really probes a flowscope /healthz endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from flowscope.core import serving
from prometheus_client import CollectorRegistry

from tests.support.deploying import REPO, subcommands

DOCKERFILE = REPO / "deploy" / "Dockerfile"
BUILD_TOOLS = ("build-essential", "gcc", "clang", "python3-dev", "linux-headers", "make")


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Dockerfile instructions, with ``\\`` continuations joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a AS b\nRUN one \\\n  # inner\n  && two\nCOPY x y\n"
    assert parse(text) == [
        Instruction("FROM", "a AS b"),
        Instruction("RUN", "one && two"),
        Instruction("COPY", "x y"),
    ]


def test_base_is_debian_bookworm_and_build_is_multi_stage(
    instructions: list[Instruction],
) -> None:
    args = {
        i.args.split("=")[0]: i.args.split("=", 1)[1] for i in instructions if i.keyword == "ARG"
    }
    assert args["DEBIAN_IMAGE"] == "debian:bookworm-slim"
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["${DEBIAN_IMAGE} AS build", "${DEBIAN_IMAGE}"]


def test_every_copied_file_exists(instructions: list[Instruction]) -> None:
    copies = [i for i in instructions if i.keyword == "COPY" and "--from" not in i.args]
    assert copies
    for copy in copies:
        *sources, _dest = shlex.split(copy.args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_build_context_keeps_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_final_stage_is_lean_and_non_root(instructions: list[Instruction]) -> None:
    build, final = stages(instructions)
    final_runs = " ".join(i.args for i in final if i.keyword == "RUN")
    assert "python3-bpfcc" in final_runs
    for tool in BUILD_TOOLS:
        assert tool not in final_runs, f"{tool} in the final image"
    assert any("build-essential" in i.args for i in build if i.keyword == "RUN")
    assert any("--system-site-packages" in i.args for i in build if i.keyword == "RUN")
    copied = [i.args for i in final if i.keyword == "COPY"]
    assert copied == ["--from=build /opt/flowscope /opt/flowscope"]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users == ["65532:65532"]
    assert any("--uid 65532" in i.args for i in final if i.keyword == "RUN")


def test_entry_point_is_the_flowscope_cli(instructions: list[Instruction]) -> None:
    (entry,) = [json.loads(i.args) for i in instructions if i.keyword == "ENTRYPOINT"]
    assert entry == ["flowscope"]
    assert {"collector", "enricher", "exporter", "observe"} <= subcommands()


def _healthcheck_argv(instructions: list[Instruction]) -> list[str]:
    (check,) = [i.args for i in instructions if i.keyword == "HEALTHCHECK"]
    exec_form = check[check.index("CMD ") + 4 :]
    argv = json.loads(exec_form)
    assert argv[:2] == ["python3", "-c"], "Python's urllib: no curl in the image"
    return [sys.executable, *argv[1:]]


async def _run(argv: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(*argv, env=env)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_healthcheck_probes_a_real_healthz_endpoint(
    instructions: list[Instruction],
) -> None:
    argv = _healthcheck_argv(instructions)
    runner, port = await serving.start("127.0.0.1:0", CollectorRegistry(), serving.Health())
    try:
        env = {"FLOWSCOPE_HTTP_ADDRESS": f"0.0.0.0:{port}"}
        assert await _run(argv, env) == 0
    finally:
        await runner.cleanup()
    # Nothing listening any more: the check must fail.
    assert await _run(argv, {"FLOWSCOPE_HTTP_ADDRESS": f"0.0.0.0:{port}"}) != 0


@pytest.mark.parametrize("host", ["", "[::]"])
async def test_healthcheck_probes_an_endpoint_on_every_address(
    instructions: list[Instruction], host: str
) -> None:
    """The chart's address (``:<port>``) and its bracketed form: the probe on 127.0.0.1
    reaches the dual-stack socket."""
    argv = _healthcheck_argv(instructions)
    runner, port = await serving.start(f"{host}:0", CollectorRegistry(), serving.Health())
    try:
        assert await _run(argv, {"FLOWSCOPE_HTTP_ADDRESS": f"{host}:{port}"}) == 0
    finally:
        await runner.cleanup()


def test_healthcheck_defaults_to_the_services_default_port(
    instructions: list[Instruction],
) -> None:
    from flowscope.core.runtime import RuntimeSettings

    code = _healthcheck_argv(instructions)[2]
    assert re.search(r"or '[^']*:(\d+)'", code)[1] == RuntimeSettings().http_address.split(":")[1]  # type: ignore[index]


def test_what_the_build_stage_copies_installs_every_module(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    """Build a wheel from exactly the files the build stage COPYs (as `pip install .`
    in the image does): every module and BPF source must end up in the package."""
    (build, _final) = stages(instructions)
    for copy in (i for i in build if i.keyword == "COPY"):
        *sources, dest = shlex.split(copy.args)
        for source in sources:
            target = (
                tmp_path / "src" / (Path(dest) / Path(source).name if dest.endswith("/") else dest)
            )
            if (REPO / source).is_dir():
                shutil.copytree(
                    REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(tmp_path / "src")],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("flowscope-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "flowscope/" + str(p.relative_to(REPO / "services"))
        for p in (REPO / "services").rglob("*.py")
        if "__pycache__" not in p.parts
    } | {"flowscope/bpf/" + p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h")}
    assert sorted(expected - packaged) == []
    assert "flowscope/observe.py" in packaged
    # the enricher's compiled flow core is built in the build stage (setup.py is copied)
    assert any(re.fullmatch(r"flowscope/enricher/_flowcore\..*\.so", n) for n in packaged)
