"""The exporter's garbage-collection threshold: the records of the batches under way
are freed before a young collection walks them."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from flowscope.core import codec
from flowscope.exporter.service import YOUNG_COLLECTION_AFTER, collect_less_often

from tests.unit.exporter.sample import flow

MESSAGE_RECORDS = 800  # the records of a busy namespace pair's message
HELD = 5  # batches held at once with the default settings: 1 filling + 4 exporting


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def _young_collections_while_batches_pass(messages: int) -> int:
    """Young collections while ``messages`` messages are decoded, each kept until
    ``HELD`` newer ones are (as batches are kept until exported), then freed."""
    message = codec.encode(codec.FLOW, [flow(i) for i in range(MESSAGE_RECORDS)])
    seen = [0]

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 0:
            seen[0] += 1

    held: list[list[dict[str, Any]]] = []
    gc.collect()
    gc.callbacks.append(count)
    try:
        for _ in range(messages):
            held.append(codec.decode(codec.FLOW, message.headers, message.body))
            del held[:-HELD]
    finally:
        gc.callbacks.remove(count)
    return seen[0]


def test_records_are_tracked_so_the_threshold_matters() -> None:
    message = codec.encode(codec.FLOW, [flow()])
    [record] = codec.decode(codec.FLOW, message.headers, message.body)
    assert gc.is_tracked(record)  # it holds a list (flow.tcp.flags.tags)


def test_batches_under_way_start_no_young_collection(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)  # CPython's default
    assert _young_collections_while_batches_pass(40) > 40  # several a message
    collect_less_often()
    assert gc.get_threshold()[0] == YOUNG_COLLECTION_AFTER
    assert HELD * MESSAGE_RECORDS * 2 < YOUNG_COLLECTION_AFTER  # dict + list per record
    assert _young_collections_while_batches_pass(40) == 0
