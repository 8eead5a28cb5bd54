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


def test_an_unanswered_pulse_makes_informers_not_heard_since_stale_from_the_last_answer() -> None:
    clock = Clock()
    health = ApiHealth(clock=clock)
    health.expect("pods", 300.0)
    health.expect("nodes", 300.0)
    clock.now = 10.0
    assert not health.pulse_answered()  # answering from the start: no recovery
    clock.now = 20.0
    assert health.pulse_unanswered()  # the first unanswered pulse, at 20
    assert not health.pulse_unanswered()
    clock.now = 25.0
    health.heard_from("nodes")  # nodes heard since: not stale
    clock.now = 30.0
    # pods last heard at 0, the API last answered at 10: stale for 20 s, not 30
    assert health.staleness() == 20.0
    health.failed("pods")  # a request failing counts from the informer's own last word
    assert health.staleness() == 30.0
    health.heard_from("pods")
    assert health.staleness() == 0.0
    assert health.pulse_answered()  # a recovery: watches are to be renewed


def test_a_pulse_never_answered_counts_from_the_last_word() -> None:
    clock = Clock()
    health = ApiHealth(clock=clock)
    health.expect("pods", 300.0)
    clock.now = 5.0
    health.pulse_unanswered()
    clock.now = 8.0
    assert health.staleness() == 8.0
