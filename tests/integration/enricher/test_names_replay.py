"""DNS answers read from the raw stream live from when they were stored, not from when
they were read: the start-up replay (``join.state_lookback``) must not revive an answer
whose TTL ran out (real nats-server, the real pipeline and name cache)."""

from __future__ import annotations

import time

from flowscope.core import codec, subjects
from flowscope.enricher.consuming import Pipeline
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from tests.unit.enricher.cluster import Clock

CLIENT = "10.9.0.1"


def exchange(name: str, address: str, ttl: int) -> dict:
    """A raw DNS exchange: CLIENT asked ``name`` and got ``address`` for ``ttl`` s."""
    return {"observer": "n1", "time_ns": 1, "id": 7, "qname": name, "qtype": "A",
            "rcode": "NOERROR", "client": CLIENT, "client_port": 5353,
            "server": "10.96.0.10", "server_port": 53,
            "answers": [{"name": name, "type": "A", "ttl": ttl, "data": address}]}  # fmt: skip


def stored(nc: NATS, sequence: int, record: dict, ago: float) -> Msg:
    """A raw DNS message as the state feed delivers it, stored ``ago`` seconds ago
    (its reply subject carries the stored time)."""
    batch = codec.encode(codec.RAW_DNS, [record])
    at = time.time_ns() - int(ago * 1e9)
    reply = f"$JS.ACK.{subjects.STREAM_RAW}.state.1.{sequence}.{sequence}.{at}.0"
    return Msg(_client=nc, subject=subjects.raw_dns("n1"), reply=reply,
               data=batch.body, headers=batch.headers)  # fmt: skip


def replica(nc: NATS, clock: Clock) -> tuple[Pipeline, NameCache]:
    names = NameCache(60, 3600, 100, clock=clock)
    enricher = Enricher(LocalResolver(frozenset()), SocketTable(100, 30), names, Observers(300),
                        clock=clock)  # fmt: skip
    return Pipeline(nc, enricher, Metrics.create(CollectorRegistry())), names


async def test_a_replayed_answer_whose_ttl_ran_out_is_not_learned(clean_nc: NATS) -> None:
    clock = Clock()
    pipeline, names = replica(clean_nc, clock)
    # seen 200 s ago, TTL 30 (floor 60): expired 140 s before the replica started
    pipeline.learn(stored(clean_nc, 1, exchange("gone.example", "192.0.2.1", 30), 200))
    assert names.lookup(CLIENT, "192.0.2.1") is None


async def test_a_replayed_answer_lives_from_when_it_was_stored(clean_nc: NATS) -> None:
    clock = Clock()
    pipeline, names = replica(clean_nc, clock)
    pipeline.learn(stored(clean_nc, 1, exchange("long.example", "192.0.2.2", 3600), 200))
    assert names.lookup(CLIENT, "192.0.2.2", clock.now + 3300) == "long.example"
    assert names.lookup(CLIENT, "192.0.2.2", clock.now + 3500) is None  # 3600 s after storing


async def test_the_newer_answer_wins_in_a_replay(clean_nc: NATS) -> None:
    """An older answer for x (TTL 300, 290 s ago: 10 s left) does not outlive a newer one
    for y (TTL 60, 5 s ago) because both were read at once."""
    clock = Clock()
    pipeline, names = replica(clean_nc, clock)
    pipeline.learn(stored(clean_nc, 1, exchange("x.example", "192.0.2.3", 300), 290))
    pipeline.learn(stored(clean_nc, 2, exchange("y.example", "192.0.2.3", 60), 5))
    assert names.lookup(CLIENT, "192.0.2.3") == "y.example"


async def test_a_live_answer_keeps_its_whole_lifetime(clean_nc: NATS) -> None:
    """Stored just now, or "later" by a server clock ahead of this one: the lifetime runs
    from now, never beyond."""
    clock = Clock()
    pipeline, names = replica(clean_nc, clock)
    pipeline.learn(stored(clean_nc, 1, exchange("now.example", "192.0.2.4", 30), 0))
    pipeline.learn(stored(clean_nc, 2, exchange("ahead.example", "192.0.2.5", 30), -100))
    assert names.lookup(CLIENT, "192.0.2.4", clock.now + 50) == "now.example"
    assert names.lookup(CLIENT, "192.0.2.5", clock.now + 70) is None
