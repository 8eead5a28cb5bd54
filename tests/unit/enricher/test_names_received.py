"""DNS answers learned late (a replay) live from when they were received."""

from __future__ import annotations

from flowscope.enricher.names import NameCache

from tests.unit.enricher.cluster import Clock
from tests.unit.enricher.test_names import answer_chain


def test_lifetime_runs_from_when_the_answer_was_received() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 10, clock=clock)
    gone = answer_chain("gone.com", [], "192.0.2.1", 30)
    assert cache.learn("10.1.0.1", "gone.com", gone, age=200) == 0
    cache.learn("10.1.0.1", "long.com", answer_chain("long.com", [], "192.0.2.2", 3600), age=200)
    assert cache.lookup("10.1.0.1", "192.0.2.1") is None
    assert len(cache) == 1  # the one that ran out took no entry (nor evicted one)
    assert cache.lookup("10.1.0.1", "192.0.2.2", clock.now + 3399) == "long.com"
    assert cache.lookup("10.1.0.1", "192.0.2.2", clock.now + 3459.5) is None  # extended by 60


def test_a_stale_answer_does_not_outlive_a_newer_one() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 10, clock=clock)
    # x.com: 10 s of its 300 left
    cache.learn("10.1.0.1", "x.com", answer_chain("x.com", [], "192.0.2.3", 300), age=290)
    cache.learn("10.1.0.1", "y.com", answer_chain("y.com", [], "192.0.2.3", 60), age=5)
    assert cache.lookup("10.1.0.1", "192.0.2.3") == "y.com"


def test_a_negative_age_counts_as_now_and_no_age_is_now() -> None:
    clock = Clock()
    cache = NameCache(60, 3600, 10, clock=clock)
    ahead = answer_chain("ahead.com", [], "192.0.2.4", 30)
    cache.learn("10.1.0.1", "ahead.com", ahead, age=-100)  # a clock ahead: received now
    cache.learn("10.1.0.1", "now.com", answer_chain("now.com", [], "192.0.2.5", 30))
    assert cache.lookup("10.1.0.1", "192.0.2.4", clock.now + 61) is None
    assert cache.lookup("10.1.0.1", "192.0.2.5", clock.now + 59) == "now.com"
