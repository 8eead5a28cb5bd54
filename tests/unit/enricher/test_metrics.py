"""The enricher's metric catalogue: a batch's tally folded into the counters."""

from __future__ import annotations

from flowscope.enricher.enriching import Tally
from flowscope.enricher.metrics import Metrics
from prometheus_client import CollectorRegistry

from tests.unit.enricher.test_enriching import A, B, dns_exchange, enricher, sock


def test_tallies_add_up_and_a_series_appears_with_its_first_tally() -> None:
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"flowscope_enricher_{name}_total", labels)

    assert value("records_in", kind="flow") is None
    metrics.add_flows(Tally(records_in=10, records_out=8, dedup_dropped=2,
                            lookups={"pod": 12, "external": 3}, process_hits=1,
                            process_misses=9, dns_hits=3))  # fmt: skip
    assert value("lookups", result="service") is None
    metrics.add_flows(Tally(records_in=5, records_out=5, lookups={"pod": 4, "service": 6},
                            dns_misses=1))  # fmt: skip
    assert (value("records_in", kind="flow"), value("records_out", kind="flow")) == (15, 13)
    assert value("dedup_dropped") == 2
    assert [value("lookups", result=k) for k in ("pod", "external", "service")] == [16, 3, 6]
    assert (value("process_joins", result="hit"), value("process_joins", result="miss")) == (1, 9)
    assert (value("dns_joins", result="hit"), value("dns_joins", result="miss")) == (3, 1)
    assert value("records_in", kind="dns") is None  # other kinds untouched


def test_a_dns_batch_counts_its_lookups_and_process_joins() -> None:
    """A DNS record's client and server are looked up, and the client's process joined,
    as a flow's ends are: counted in the same series."""
    registry = CollectorRegistry()
    metrics = Metrics.create(registry)
    e = enricher()
    e.learn_sockets([{**sock("node-1", "udp", A, 3333, B, 53, 11, "ca"), "proto": 17}])
    out = e.dns([dns_exchange("node-1", A, B), dns_exchange("node-1", A, "203.0.113.9")])
    metrics.add_dns(out.tally)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"flowscope_enricher_{name}_total", labels)

    assert value("records_out", kind="dns") == 2
    assert value("lookups", result="pod") == 3 and value("lookups", result="external") == 1
    # the client's socket to B is known; to the other server it is not
    assert (value("process_joins", result="hit"), value("process_joins", result="miss")) == (1, 1)
