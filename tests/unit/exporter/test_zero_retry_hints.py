"""A receiver that answers "retry after 0 s" while it is overloaded (HTTP 503 with
``Retry-After: 0`` or a date already past, gRPC RESOURCE_EXHAUSTED with a RetryInfo of
0 s or a few nanoseconds) gets the backoff's pace, not thousands of requests a second."""

from __future__ import annotations

from flowscope.exporter.otlp import parse_retry_after
from flowscope.exporter.retrying import Backoff


def test_a_hint_of_zero_leaves_the_backoff_its_own_delays() -> None:
    backoff = Backoff(0.5, 4.0)
    for ceiling in (0.5, 1.0, 2.0, 4.0, 4.0):
        assert ceiling / 2 <= backoff.next_delay(0.0) <= ceiling


def test_a_retry_after_date_already_past_leaves_the_backoff_its_own_delays() -> None:
    backoff = Backoff(0.5, 4.0, attempt=3)
    assert 2.0 <= backoff.next_delay(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")) <= 4.0


def test_a_tiny_hint_is_raised_to_the_first_step() -> None:
    backoff = Backoff(0.5, 30.0)
    assert backoff.next_delay(1e-9) == 0.5
    assert backoff.next_delay(0.2) == 0.5
    assert backoff.next_delay(0.7) == 0.7
