"""The enricher's metric catalogue: a batch's tally folded into the counters."""

from __future__ import annotations

from flowscope.enricher.enriching import Tally
from flowscope.enricher.metrics import Metrics
from prometheus_client import CollectorRegistry


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
