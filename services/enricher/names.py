"""The DNS names clients resolved: (client address, answered address) → name asked.

Built from the DNS exchanges the collectors capture. An answer's address maps to the
*question* name — the name the client asked for — so a CNAME chain
(``www.example.com → edge.cdn.net → 192.0.2.7``) folds to ``www.example.com``. Only the
address answers on that chain count: their owner is the question name or a name the
exchange's CNAME answers lead to from it. An address record for any other owner (extra
records a server added, or injected ones) answered no question of the client's, and
naming its address after the question would be wrong.

A chain can also span messages: a server may answer with the CNAME alone (an
authoritative server whose CNAME leads out of its zone, a forwarder that does not chase
it), and the client then asks for the target itself. So an exchange whose chain has
CNAME answers but no address answer leaves, per client, an alias: each name its chain
leads to → the name the client asked (``_aliases``). A later question for such a name
is learned under the name the alias holds, as if one message had answered the whole
chain. An alias holds the name first asked, never another alias, so a lookup takes one
step and a CNAME loop across messages ends there. Its lifetime is the chain's shortest
CNAME TTL, clamped like an address answer's and run from when it was received; it
counts for a question received while it was valid (so a replay folds as the live
messages did, even an alias that ran out before it was read). The aliases are one LRU
bounded by ``max_entries`` too. A question the client asks for such a name on its own,
while the alias lasts, is taken for the chain's.

Lifetimes follow the answers' TTLs clamped to ``[ttl_min, ttl_max]``: the floor because
clients keep using an address past a tiny TTL, the cap to bound staleness. A lifetime
runs from when the answer was received (``NameCache.learn``'s ``age``), not from when it
is learned: a replica that starts replays minutes of answers at once, and one whose
lifetime had run out by then must not name the flows of now, nor outlive a newer answer.
A lookup hit extends an entry to at least ``ttl_min`` from now, so a long-lived
connection keeps the name it was opened with.

One (client, address) holds one name, and an address can answer several names (a CDN's or
a load balancer's). An answer for the name an entry holds renews it with the answer's
lifetime. An answer for another name replaces the entry unless the entry is still valid
and outlives the new answer: then the entry stays as it is. So no valid mapping is cut
short by a shorter-lived one (a TTL 0 answer for ``tracker.example`` does not take the
address from ``api.example`` for good 60 s later), and the newest name takes over once it
is the longest-lived.

The table is bounded to ``max_entries`` by second-chance eviction (CLOCK, an
approximation of LRU): a hit only marks its entry used, and eviction takes entries from
the oldest end, moving a used one to the newest end with its mark cleared instead of
dropping it. So an entry looked up since the eviction last passed it stays, as it would
in an LRU, while a hit writes one list item rather than relinking the OrderedDict (a
``move_to_end`` per flow record that named its destination). A new entry starts
unmarked — only a lookup earns the second chance, or a burst of answers would make every
entry look used — and eviction passes over it, so the answer being learned is not the one
its own learning evicts. Each entry also holds its name's JSON form
(``orjson.dumps(name)``, copied to its length: ``codec.kept_json``), which records
render.

A client is an address, and a pod may have several (dual-stack ``status.podIPs``): it
may ask the IPv4 DNS server for an AAAA record and connect over IPv6. So an answer can
be learned for the client's other addresses too (``also``; the enricher passes the
pod's other addresses), one entry each, bounded like any other.

Most lookups miss: a pod talking to a Service or another pod asked no name for that
address, and the reverse lookup (the name the destination resolved for the source)
rarely finds one. ``_answers`` counts the entries each address answers, so a lookup of
an address no entry has is a miss without building the key; ``generation`` is bumped
whenever an address gets its first entry, so the compiled core may keep "no entry
answers this address" per address until then (flowcore.c, ``unanswered``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from flowscope.core.codec import kept_json

ADDRESS_TYPES = ("A", "AAAA")
NAME, EXPIRY, NAME_JSON, USED = range(4)  # an entry: [name, expiry, its JSON, hit mark]


class NameCache:
    """Bounded (second chance) map of (client, address) → [name, expiry, JSON, used].

    An entry list is the one under its key for as long as it has its four items:
    learning a key again updates its entry in place, and an entry that is dropped
    (evicted, or expired by :meth:`lookup`) is emptied. The enricher's compiled core
    keeps entries it found by identity on that promise (flowcore.c, "name ways").
    """

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
        self._answers: dict[str, int] = {}  # address → entries whose address it is
        # (client, CNAME target) → (the name the client asked, expiry): see the module
        self._aliases: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self.generation = 0  # bumped when an address gets its first entry

    def __len__(self) -> int:
        return len(self._entries)

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.ttl_min), self.ttl_max)

    def learn(
        self,
        client: str,
        qname: str,
        answers: Sequence[Mapping[str, Any]],
        also: Iterable[str] = (),
        age: float = 0.0,
    ) -> int:
        """Remember every address answer on ``qname``'s CNAME chain for ``client``
        (and each of ``also``: the client's other addresses) under ``qname``, or under
        the name the client asked when a CNAME it received earlier led to ``qname``;
        returns how many answers (not those that ran out before they were read: see the
        module). A chain with no address answer leaves its aliases (see the module).
        ``answers``: the exchange's, its CNAME answers included. ``age``: seconds since
        they were received (a message read from the raw stream after it was stored), so
        their lifetimes run from then; a negative age (the stream's clock ahead of this
        one) counts as now: a lifetime is never lengthened."""
        now = self._clock()
        received = now - max(age, 0.0)
        question = _plain(qname)
        if not question:
            return 0
        name = self._asked(client, question, received) if self._aliases else question
        try:
            form = kept_json(name)
        except orjson.JSONEncodeError:  # a lone surrogate: no record could carry it
            return 0
        clients = (client, *also)
        learned = self._learn_answers(question, name, form, answers, clients, received, now)
        if not learned:
            self._learn_aliases(question, name, answers, clients, received)
        return learned

    def _asked(self, client: str, question: str, received: float) -> str:
        """The name ``client`` asked that a CNAME it received led to ``question`` (an
        alias valid when the question was ``received``), else ``question``. One that ran
        out stays until the bound evicts it: a replay may still read a question received
        while it was valid."""
        key = (client, question)
        alias = self._aliases.get(key)
        if alias is None or alias[1] < received:
            return question
        self._aliases.move_to_end(key)
        return alias[0]

    def _learn_aliases(
        self,
        question: str,
        name: str,
        answers: Sequence[Mapping[str, Any]],
        clients: tuple[str, ...],
        received: float,
    ) -> None:
        """An alias (see the module) for each of ``clients`` from each name the CNAME
        answers lead to from ``question`` to ``name``, the name asked: when none of
        the chain's names has an address answer (the client asks for the target next)."""
        chain = _chain(question, answers)
        ttls: list[int] = []
        for answer in answers:
            owner = _plain(answer.get("name"))
            if owner not in chain:
                continue
            kind = answer.get("type")
            if kind in ADDRESS_TYPES:
                return
            if kind == "CNAME":
                ttl = answer.get("ttl", 0)
                ttls.append(ttl if isinstance(ttl, int) else 0)
        expiry = received + self.clamp(min(ttls, default=0))
        aliases = self._aliases
        for target in sorted(chain - {question, name}):  # sorted: replicas evict alike
            for asker in clients:
                aliases[(asker, target)] = (name, expiry)
                aliases.move_to_end((asker, target))
        while len(aliases) > self.max_entries:
            aliases.popitem(last=False)

    def _learn_answers(
        self,
        question: str,
        name: str,
        form: bytes,
        answers: Sequence[Mapping[str, Any]],
        clients: tuple[str, ...],
        received: float,
        now: float,
    ) -> int:
        """:meth:`learn` for ``question`` under ``name`` (``form``: its JSON), for each
        of ``clients``: the address answers on the question's chain still valid ``now``,
        their lifetimes run from ``received``. One loop with no call per answer (only a
        new entry makes one): this runs for every DNS record."""
        learned = 0
        entries = self._entries
        chain: set[str] | None = None  # walked when an answer's owner is not the question
        for answer in answers:
            if answer.get("type") not in ADDRESS_TYPES:
                continue
            owner = answer.get("name")
            if owner != question:
                if chain is None:
                    chain = _chain(question, answers)
                if _plain(owner) not in chain:
                    continue
            address = str(answer.get("data", ""))
            ttl = answer.get("ttl", 0)
            expiry = received + self.clamp(ttl if isinstance(ttl, int) else 0)
            if expiry < now:  # ran out before it was read: it names nothing now
                continue
            for asker in clients:
                key = (asker, address)
                entry = entries.get(key)
                if entry is None:
                    self._add_entry(key, name, expiry, form)
                    continue
                # another name's entry that outlives this answer stays (see the module);
                # else updated in place: the entry stays the one under its key (the class)
                if entry[NAME] == name or entry[EXPIRY] <= expiry:
                    entry[:] = (name, expiry, form, entry[USED])
                entries.move_to_end(key)
            learned += 1
        return learned

    def _add_entry(self, key: tuple[str, str], name: str, expiry: float, form: bytes) -> None:
        """A new, unmarked entry under ``key`` (client, address): counted for its address
        (its first bumps ``generation``), then the table bounded (:meth:`_evict`)."""
        address = key[1]
        counts = self._answers
        count = counts.get(address, 0)
        if not count:
            self.generation += 1
        counts[address] = count + 1
        entries = self._entries
        entries[key] = entry = [name, expiry, form, False]
        if len(entries) > self.max_entries:
            self._evict(entry)

    def _evict(self, new: list[Any]) -> None:
        """Drop one entry: the first unused one from the oldest end that is not ``new``,
        the entry just added (second chance)."""
        entries = self._entries
        while True:
            key, entry = entries.popitem(last=False)
            if entry is new or entry[USED]:  # a second chance, at the newest end
                entry[USED] = False
                entries[key] = entry
            else:
                self._forget(key[1], entry)
                return

    def lookup(self, client: str, address: str, now: float | None = None) -> str | None:
        """The name ``client`` resolved to ``address``, if still valid (``now``: clock)."""
        if address not in self._answers:
            return None
        key = (client, address)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now is None:
            now = self._clock()
        if entry[EXPIRY] <= now:
            del self._entries[key]
            self._forget(address, entry)
            return None
        entry[USED] = True
        if entry[EXPIRY] < now + self.ttl_min:
            entry[EXPIRY] = now + self.ttl_min
        name: str = entry[NAME]
        return name

    def _forget(self, address: str, entry: list[Any]) -> None:
        """``entry``, answering ``address``, was dropped: counted out, and emptied
        (see the class)."""
        entry.clear()
        count = self._answers[address] - 1
        if count:
            self._answers[address] = count
        else:
            del self._answers[address]


def _chain(name: str, answers: Iterable[Mapping[str, Any]]) -> set[str]:
    """The names the CNAME answers lead to from ``name``, ``name`` included. Each name
    is followed once (a loop ends there), so the walk takes a step per CNAME answer at
    most; an owner with several CNAMEs (no valid response has one) leads to each."""
    targets: dict[str, list[str]] = {}
    for answer in answers:
        if answer.get("type") == "CNAME":
            targets.setdefault(_plain(answer.get("name")), []).append(_plain(answer.get("data")))
    chain, todo = {name}, [name]
    while todo and targets:
        for target in targets.get(todo.pop(), ()):
            if target not in chain:
                chain.add(target)
                todo.append(target)
    return chain


def _plain(name: Any) -> str:
    """A DNS name as a question is kept: lower-cased, without its trailing dot ("" if not
    a str). Only a dot that ends the name goes: in ``a\\.`` (the collector's rendering
    of the one label ``a.``) the dot is escaped, part of the label, and stays."""
    if not isinstance(name, str):
        return ""
    name = name.lower()
    if name.endswith(".") and (len(name) - 1 - len(name[:-1].rstrip("\\"))) % 2 == 0:
        return name[:-1]
    return name
