"""The DNS names clients resolved: (client address, answered address) → name asked.

Built from the DNS exchanges the collectors capture. An answer's address maps to the
*question* name — the name the client asked for — so a CNAME chain
(``www.example.com → edge.cdn.net → 192.0.2.7``) folds to ``www.example.com``.

Lifetimes follow the answers' TTLs clamped to ``[ttl_min, ttl_max]``: the floor because
clients keep using an address past a tiny TTL, the cap to bound staleness. A lookup hit
extends an entry to at least ``ttl_min`` from now, so a long-lived connection keeps the
name it was opened with. The table is an LRU bounded to ``max_entries``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ADDRESS_TYPES = ("A", "AAAA")


class NameCache:
    """Bounded LRU of (client, address) → (name, expiry)."""

    def __init__(
        self,
        ttl_min: float,
        ttl_max: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_min = ttl_min
        self.ttl_max = max(ttl_max, ttl_min)
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.ttl_min), self.ttl_max)

    def learn(self, client: str, qname: str, answers: Iterable[Mapping[str, Any]]) -> int:
        """Remember every address answer for ``client`` under ``qname``; returns how many."""
        now = self._clock()
        name = qname.rstrip(".").lower()
        learned = 0
        for answer in answers:
            if answer.get("type") not in ADDRESS_TYPES or not name:
                continue
            key = (client, str(answer.get("data", "")))
            ttl = answer.get("ttl", 0)
            self._entries[key] = [name, now + self.clamp(ttl if isinstance(ttl, int) else 0)]
            self._entries.move_to_end(key)
            learned += 1
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return learned

    def lookup(self, client: str, address: str, now: float | None = None) -> str | None:
        """The name ``client`` resolved to ``address``, if still valid (``now``: clock)."""
        entry = self._entries.get((client, address))
        if entry is None:
            return None
        if now is None:
            now = self._clock()
        if entry[1] <= now:
            del self._entries[(client, address)]
            return None
        self._entries.move_to_end((client, address))
        if entry[1] < now + self.ttl_min:
            entry[1] = now + self.ttl_min
        name: str = entry[0]
        return name
