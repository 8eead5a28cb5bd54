"""The compiled flow core is built by every install (setup.py) and used by default."""

import gc
import hashlib
import random
import sys
import tracemalloc

import pytest
from flowscope.core import codec
from flowscope.core.errors import CodecError
from flowscope.enricher import enriching
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable


def _enricher(native: bool) -> Enricher:
    resolver = LocalResolver(frozenset({"10.0.0.1"}), "node-a")
    return Enricher(
        resolver, SocketTable(100, 1.0), NameCache(1, 10, 100), Observers(60), native=native
    )


def test_the_compiled_core_is_built() -> None:
    # scripts/bootstrap installs a compiler and builds it: a run without it would test
    # only the Python path and measure the slow one.
    assert enriching.NATIVE_AVAILABLE


def test_native_is_the_default_and_can_be_turned_off() -> None:
    assert _enricher(True).native
    assert not _enricher(False).native


def test_the_compiled_core_keeps_no_reference_after_a_batch() -> None:
    """A reference counted once too often in C is memory that is never freed: the same
    batches enriched again must leave the heap exactly as they found it (socket and DNS
    hits, dedup, bad and DNAT'ed records included)."""
    made = _enricher(True)
    made.learn_sockets([
        {"observer": "node-a", "time_ns": 1, "event": "connect", "proto": 6, "src": "10.0.0.1",
         "sport": 40000 + i, "dst": "8.8.8.8", "dport": 443, "pid": 7, "tid": 7, "comm": "curl",
         "container_id": "c" * 12}
        for i in range(10)
    ])  # fmt: skip
    made.learn_dns([
        {"observer": "node-a", "time_ns": 1, "id": 1, "qname": "example.com", "qtype": "A",
         "rcode": "NOERROR", "client": "10.0.0.1", "client_port": 5353, "server": "10.0.0.2",
         "server_port": 53, "answers": [{"name": "example.com", "type": "A", "ttl": 30,
                                         "data": "8.8.8.8"}]},
    ])  # fmt: skip
    flow = {
        "observer": "node-a", "start_ns": 1, "end_ns": 2, "end_reason": "active_timeout",
        "proto": 6, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 40000, "dport": 443,
        "bytes": 100, "packets": 2, "rbytes": 50, "rpackets": 1, "tcp_flags": 0x12,
    }  # fmt: skip
    batch = [
        *({**flow, "sport": 40000 + i} for i in range(20)),
        {**flow, "src": "8.8.8.8", "dst": "10.0.0.1", "sport": 443, "dport": 40001},
        {**flow, "proto": 17, "src": "::1", "dst": "2001:db8::1"},
        {**flow, "nat_dst": "10.0.0.2", "nat_dport": 80},
        {**flow, "bytes": -1},
        {**flow, "src": "not an address"},
        "not a record",
    ]

    # the same records as a message body, which the core reads itself (flow_batch), and
    # one it gives up on part-way (a line that is not an object: codec.decode's error)
    message = codec.encode(codec.RAW_FLOW, [r for r in batch if isinstance(r, dict)])
    broken = message.body + b"[]\n" + message.body
    broken_headers = {**message.headers, codec.COUNT_HEADER: str(broken.count(b"\n"))}

    def enrich_all(rounds: int) -> None:
        for _ in range(rounds):
            made.flow_lines([dict(r) if isinstance(r, dict) else r for r in batch])
            made.flow_batch(message.headers, message.body)
            with pytest.raises(CodecError, match="not a JSON object"):
                made.flow_batch(broken_headers, broken)

    enrich_all(5)  # caches filled: addresses, identities, JSON pieces, subjects
    # the long-lived objects every record touches: an extra reference kept per record
    # would show in their counts
    kept = [
        *made.flow_lines([dict(r) for r in batch if isinstance(r, dict)]).lines,
        *made.resolver._cache.values(),  # type: ignore[attr-defined]
        *(i.source_json for i in made.resolver._cache.values()),  # type: ignore[attr-defined]
        *made.sockets._sockets.values(),
        *(entry[0] for entry in made.names._entries.values()),
        *made.observers.seen,
    ]
    gc.collect()
    tracemalloc.start()
    try:
        enrich_all(1)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        counts = [sys.getrefcount(obj) for obj in kept]
        enrich_all(50)  # 1,300 records: one object kept per record would be 20 KB or more
        gc.collect()
        # the rest of the process (module-wide caches other tests filled, their threads)
        # may move a few bytes; a leak moves thousands
        assert tracemalloc.get_traced_memory()[0] - before < 2048
        assert [sys.getrefcount(obj) for obj in kept] == counts
    finally:
        tracemalloc.stop()


def test_the_cores_sha1_both_ways_is_hashlibs() -> None:
    # The Community ID's SHA-1: with the x86 SHA extensions when the CPU has them
    # (_flowcore.SHA_NI), else the portable rounds; both must be SHA-1 for every length
    # one block takes. On a CPU without the extensions both calls take the portable way.
    from flowscope.enricher import _flowcore

    rnd = random.Random(7)
    for length in range(56):
        for _ in range(50):
            data = rnd.randbytes(length)
            digest = hashlib.sha1(data).digest()
            assert _flowcore.sha1(data, True) == digest
            assert _flowcore.sha1(data, False) == digest
    with pytest.raises(ValueError, match="55 bytes"):
        _flowcore.sha1(bytes(56), True)
