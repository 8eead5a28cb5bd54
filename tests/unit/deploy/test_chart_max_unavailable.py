"""``collector.maxUnavailable`` and ``podDisruptionBudget.maxUnavailable``: the schema
refuses at install what the API server would refuse in the rendered objects.

There is no API server here, so its rules are written out below, from Kubernetes'
validation (pkg/apis/apps/validation ``ValidateRollingUpdateDaemonSet``,
pkg/apis/policy/validation ``ValidatePodDisruptionBudgetSpec``): an integer of 0 or more
or a percentage ``^[0-9]+%$`` of at most 100%; and a DaemonSet's rolling update must let
some pods go, ``maxUnavailable`` or ``maxSurge`` non-zero (the chart sets no
``maxSurge``, which defaults to 0). Before, ``0``, ``"0%"`` and ``"150%"`` passed the
schema and the install or upgrade failed at the API server instead.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.chart_templates import render_objects
from tests.unit.deploy.test_chart_schema import CHART, problems

CANDIDATES = [0, 1, 2, 100, -1, "0%", "00%", "1%", "010%", "10%", "100%", "0100%",
              "101%", "150%", "1000%", "ten", "10", "%"]  # fmt: skip


def count(value: int | str) -> int:
    return int(value[:-1]) if isinstance(value, str) else value


def valid_int_or_percent(value: Any) -> bool:
    """ValidatePositiveIntOrPercent and IsNotMoreThan100Percent."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return bool(re.fullmatch(r"[0-9]+%", value)) and count(value) <= 100


def daemonset_accepted(rolling_update: dict[str, Any]) -> bool:
    unavailable = rolling_update["maxUnavailable"]
    surge = rolling_update.get("maxSurge", 0)
    if not (valid_int_or_percent(unavailable) and valid_int_or_percent(surge)):
        return False
    return (count(unavailable) != 0) != (count(surge) != 0)


def rendered(values: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(o for o in render_objects(CHART, values) if o["kind"] == kind)


@pytest.mark.parametrize("value", CANDIDATES, ids=repr)
def test_collector_rollout_passes_exactly_when_the_api_server_takes_it(value: Any) -> None:
    values = {"collector": {"maxUnavailable": value}}
    if problems(values):
        assert not daemonset_accepted({"maxUnavailable": value})
        return
    spec = rendered(values, "DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]
    assert spec == {"maxUnavailable": value}
    assert daemonset_accepted(spec), f"the API server refuses {spec}"


@pytest.mark.parametrize("value", CANDIDATES, ids=repr)
def test_disruption_budget_passes_exactly_when_the_api_server_takes_it(value: Any) -> None:
    values = {"podDisruptionBudget": {"maxUnavailable": value}, "exporter": {"replicas": 2}}
    if problems(values):
        assert not valid_int_or_percent(value)
        return
    maximum = rendered(values, "PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert maximum == value
    assert valid_int_or_percent(maximum), f"the API server refuses maxUnavailable {maximum!r}"
