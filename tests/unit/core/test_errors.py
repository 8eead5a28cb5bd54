"""How bad records are grouped into dead-letter copies, and their reasons joined."""

from __future__ import annotations

from flowscope.core.errors import RecordError, grouped, listed


def test_the_first_distinct_keys_are_apart_and_the_rest_share_one_group() -> None:
    keys = ["a", "b", "a", "c", "d", "b", "e"]
    assert grouped(keys, apart=3) == [[0, 2], [1, 5], [3], [4, 6]]


def test_no_shared_group_while_the_keys_fit() -> None:
    assert grouped(["x", "y", "x"], apart=2) == [[0, 2], [1]]
    assert grouped([]) == []


def test_listed_names_each_reason_once_then_how_many_more() -> None:
    assert listed(["r1", "r2", "r1"]) == "r1; r2"
    assert listed([f"r{i}" for i in range(11)], most=8) == "; ".join(
        [f"r{i}" for i in range(8)] + ["and 3 more"]
    )


def test_a_summary_lists_at_most_its_first_problems() -> None:
    errors = [RecordError("raw.flow", i, f"problem {i}") for i in range(10)]
    assert RecordError.summary(errors, most=2) == (
        "bad-record: raw.flow record #0: problem 0; record #1: problem 1; and 8 more problems"
    )
