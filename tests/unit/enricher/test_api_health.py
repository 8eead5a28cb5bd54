"""Staleness: the time since the stalest informer last heard from the Kubernetes API."""

from __future__ import annotations

from flowscope.enricher.watching import ApiHealth, WatchSettings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_quiet_within_the_silence_limit_is_not_stale_past_it_counts_from_the_last_word() -> None:
    clock = Clock()
    health = ApiHealth(clock=clock)
    health.expect("pods", 10.0)
    health.expect("nodes", 10.0)
    clock.now = 5.0
    health.heard_from("nodes")
    clock.now = 10.0  # a healthy WATCH may be this quiet
    assert health.staleness() == 0.0
    clock.now = 12.0  # pods silent past the limit: stale since its last word, at 0
    assert health.staleness() == 12.0
    health.heard_from("pods")
    assert health.staleness() == 0.0


def test_a_failure_is_stale_at_once_from_the_last_word_until_heard_again() -> None:
    clock = Clock()
    health = ApiHealth(clock=clock)
    health.expect("pods", 300.0)
    clock.now = 40.0
    health.failed("pods")
    assert health.staleness() == 40.0  # not 0: the last word was at 0
    clock.now = 50.0
    health.failed("pods")
    assert health.staleness() == 50.0
    health.heard_from("pods")
    assert health.staleness() == 0.0


def test_silence_limit_exceeds_the_watch_timeout() -> None:
    assert WatchSettings(500, 300, 30.0).silence_limit == 330.0
    assert WatchSettings(500, 1, 30.0).silence_limit == 3.0
