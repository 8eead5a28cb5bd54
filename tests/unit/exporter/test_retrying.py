"""The retry backoff: doubling, jitter into [d/2, d], the cap, a server's hint."""

from __future__ import annotations

from flowscope.exporter.retrying import SERVER_HINT_LIMIT, Backoff


def test_delays_double_up_to_the_cap_jittered_into_the_upper_half() -> None:
    backoff = Backoff(0.5, 4.0)
    for ceiling in (0.5, 1.0, 2.0, 4.0, 4.0, 4.0):
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_a_backend_down_for_thousands_of_retries_stays_at_the_cap() -> None:
    """2**attempt times a float overflows past attempt 1023: a sink retrying every
    30 s reaches that after about 8.5 hours of outage."""
    backoff = Backoff(0.5, 30.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert 15.0 <= delay <= 30.0


def test_a_server_hint_wins_up_to_the_limit() -> None:
    backoff = Backoff(0.5, 30.0, attempt=4000)
    assert backoff.next_delay(2.5) == 2.5
    assert backoff.next_delay(10_000) == SERVER_HINT_LIMIT
