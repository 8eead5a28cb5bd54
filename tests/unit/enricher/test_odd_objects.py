"""Any shape of Kubernetes object converts or raises OddObject — nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from flowscope.enricher import objects
from flowscope.enricher.objects import OddObject
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.enricher import cluster

junk = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2), st.just({}),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))  # fmt: skip
CONVERTERS = [
    (lambda o: objects.pod_from_json(o, ("app",)), cluster.pod("p", owner=("ReplicaSet", "r"),
                                                               container_ids={"c": "main"},
                                                               labels={"app": "x"})),
    (objects.service_from_json, cluster.service("s", lb_ips=("203.0.113.1",))),
    (objects.node_from_json, cluster.node("n", "192.168.0.1")),
    (objects.endpointslice_from_json, cluster.endpointslice("e", "s", ("10.0.0.1",))),
    (objects.workload_from_json("Job"), cluster.workload("Job", "j", owner=("CronJob", "c"))),
]  # fmt: skip


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON object."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, (*prefix, i))
    return out


def replaced(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(obj) if isinstance(obj, list) else dict(obj)
    copy[path[0]] = replaced(obj[path[0]], path[1:], value)
    return copy


@pytest.mark.parametrize("convert,sample", CONVERTERS)
@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_any_field_replaced_by_junk_converts_or_is_odd(
    convert: Any, sample: Any, data: Any
) -> None:
    obj = sample
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(obj) or [()]))
        obj = replaced(obj, path, data.draw(junk))
    try:
        result = convert(obj)
    except OddObject:
        return  # counted and skipped by the informer
    expected = {objects.Pod, objects.Service, objects.Node, objects.EndpointSlice, objects.Workload}
    assert type(result) in expected
    assert isinstance(result.namespace if hasattr(result, "namespace") else "", str)
