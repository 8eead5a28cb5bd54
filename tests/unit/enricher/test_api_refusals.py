"""What the API answered to the failing requests: kept for the readiness detail until the
resource hears from the API again, dropped when a failure brings no answer."""

from __future__ import annotations

from flowscope.enricher.watching import ApiHealth


def test_refusals_name_each_refused_resource_until_it_is_heard_again() -> None:
    health = ApiHealth(clock=lambda: 0.0)
    for resource in ("pods", "endpointslices", "nodes"):
        health.expect(resource, 10.0)
    health.failed("pods")  # connection refused: no answer
    health.failed("nodes", "WATCH answered HTTP 403 Forbidden: nodes is forbidden")
    health.failed("endpointslices", "LIST answered HTTP 403 Forbidden: no")
    assert health.refusals() == (
        "endpointslices: LIST answered HTTP 403 Forbidden: no; "
        "nodes: WATCH answered HTTP 403 Forbidden: nodes is forbidden"
    )
    health.heard_from("nodes")
    health.failed("endpointslices")  # then unreachable: the old answer no longer holds
    assert health.refusals() == ""
