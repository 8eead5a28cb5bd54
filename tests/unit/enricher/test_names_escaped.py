"""DNS names in presentation form keep their escapes in the name cache."""

from __future__ import annotations

import pytest
from flowscope.enricher.names import NameCache


@pytest.mark.parametrize(
    ("qname", "kept"),
    [("a\\.", "a\\."), ("a\\..", "a\\."), ("a\\\\.", "a\\\\"), ("Example.COM.", "example.com")],
)
def test_only_an_unescaped_trailing_dot_is_removed(qname: str, kept: str) -> None:
    """``a\\.`` is one label ending in a dot (the collector's rendering of b"a."):
    removing that dot would leave a broken escape."""
    cache = NameCache(60, 3600, 100, clock=lambda: 1000.0)
    answer = {"name": qname, "type": "A", "ttl": 60, "data": "192.0.2.9"}
    assert cache.learn("10.0.0.1", qname, [answer]) == 1
    assert cache.lookup("10.0.0.1", "192.0.2.9") == kept


def test_chain_owner_with_an_escaped_trailing_dot_is_not_the_question() -> None:
    cache = NameCache(60, 3600, 100, clock=lambda: 1000.0)
    answer = {"name": "a\\.", "type": "A", "ttl": 60, "data": "192.0.2.9"}
    assert cache.learn("10.0.0.1", "a\\", [answer]) == 0
