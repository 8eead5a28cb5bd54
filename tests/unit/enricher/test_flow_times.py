"""A raw flow's times are its interval's first and last packet (DESIGN.md): a report
whose end_ns comes before its start_ns, or whose start_ns is negative, is a bad record,
dead-lettered, in the Python path and in the compiled core alike (which hands it to the
Python path for its error). Both used to publish it, with a negative event.duration
downstream."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.enricher.test_enriching import A, B, enricher, flow

BAD_TIMES = {
    "end before start": {"start_ns": 2_000_000_000, "end_ns": 1_000_000_000},
    "negative start": {"start_ns": -5, "end_ns": 10},
    "both negative": {"start_ns": -10, "end_ns": -5},
}
GOOD_TIMES = {
    "one packet": {"start_ns": 1_000_000_000, "end_ns": 1_000_000_000},
    "zero": {"start_ns": 0, "end_ns": 0},
    "ordered": {"start_ns": 1_000_000_000, "end_ns": 2_000_000_000},
}


def outcomes(raw: dict[str, Any]) -> dict[str, tuple[int, list[str]]]:
    """(records out, bad records' errors) from the Python path, the compiled core fed
    decoded records, and the compiled core reading the raw message itself."""
    python = enricher(native=False).flows([dict(raw)])
    lines = enricher(native=True).flow_lines([dict(raw)])
    headers = {"Flowscope-Schema": "raw.flow/1", "Flowscope-Count": "1"}
    message = enricher(native=True).flow_batch(headers, orjson.dumps(raw) + b"\n")
    return {
        name: (out.tally.records_out, [str(error) for _, error in out.bad])
        for name, out in (("python", python), ("lines", lines), ("message", message))
    }


@pytest.mark.parametrize("times", BAD_TIMES.values(), ids=BAD_TIMES.keys())
def test_impossible_times_are_a_bad_record_in_every_path(times: dict[str, int]) -> None:
    raw = flow("node-1", A, B, 40000, 80, **times)
    for path, (out, errors) in outcomes(raw).items():
        assert (path, out) == (path, 0)
        assert len(errors) == 1, path
        assert "start_ns negative or after end_ns" in errors[0], path


@pytest.mark.parametrize("times", GOOD_TIMES.values(), ids=GOOD_TIMES.keys())
def test_ordered_times_are_enriched_in_every_path(times: dict[str, int]) -> None:
    raw = flow("node-1", A, B, 40000, 80, **times)
    assert outcomes(raw) == {path: (1, []) for path in ("python", "lines", "message")}
