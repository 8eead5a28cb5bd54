"""Names in records come from whoever runs a workload: none may drive the user's terminal.

A pod, process, node or DNS name holding ESC, BEL or a C1 control (U+009B is CSI) would
otherwise retitle, clear or rewrite the terminal observe prints to.
"""

from __future__ import annotations

import io
import logging

import orjson
import pytest
from flowscope.core import codec
from flowscope.core.logs import RateLimitedLog
from flowscope.observe import Palette, Viewer, render_json, render_line

from tests.support.flows import flow, pod

EVIL = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\u202e"
CONTROLS = ("\x1b", "\x07", "\x9b", "\x7f", "\u202e")


def hostile_record() -> dict[str, object]:
    source = pod(EVIL, EVIL, "10.0.0.5", 41234, process_executable_name=EVIL, process_pid=1)
    record = flow(source, pod("db", "pg-0", "10.0.1.9", 5432), flags=["SYN", EVIL])
    record["source.domain"] = EVIL
    record["destination.domain"] = "bücher.example"  # printable: shown as it is
    record["observer.node.name"] = EVIL
    record["network.transport"] = EVIL
    return record


@pytest.mark.parametrize("colour", [False, True])
def test_a_line_carries_no_control_character_from_a_record(colour: bool) -> None:
    line = render_line(hostile_record(), Palette(enabled=colour))
    if colour:  # the palette's own escapes are the only ones left
        line = line.replace("\x1b[0m", "")
        for code in ("2", "32", "36", "33", "31"):
            line = line.replace(f"\x1b[{code}m", "")
    assert not [c for c in CONTROLS if c in line], repr(line)
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x7f\\u202e" in line
    assert "(bücher.example)" in line


def test_json_output_escapes_controls_and_reads_back_as_the_record() -> None:
    record = hostile_record()
    line = render_json(record, Palette(enabled=False))
    assert not [c for c in CONTROLS[:4] if c in line], repr(line)
    assert orjson.loads(line) == record


def test_a_warning_about_a_subject_carries_no_control_character() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.observe.hostile")
    logger.addHandler(logging.StreamHandler(stream))
    logger.propagate = False
    viewer = Viewer(
        keep=lambda record: True, render=render_line, palette=Palette(enabled=False),
        out=io.StringIO(), warnings=RateLimitedLog(logger), on_closed=lambda: None,
    )  # fmt: skip
    headers = {codec.SCHEMA_HEADER: codec.FLOW.header}
    assert viewer.records(f"flowscope.flows.{EVIL}.db", headers, b"{bad\n") == []
    good = flow(pod("a", "b", "10.0.0.1", 1), pod("c", "d", "10.0.0.2", 2))
    missing = {k: v for k, v in good.items() if k != "source.port"}
    bad = codec.encode(codec.FLOW, [missing])
    assert viewer.records(f"flowscope.flows.db.{EVIL}", bad.headers, bad.body) == []
    logged = stream.getvalue()
    assert "skipped a message" in logged and "skipped a record" in logged
    assert not [c for c in CONTROLS if c in logged], repr(logged)
