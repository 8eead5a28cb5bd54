"""Hypothesis strategies: random enriched records for checking fast encoding paths
against the straightforward ones."""

from __future__ import annotations

from typing import Any

from flowscope.core.records import FLOW_OPTIONAL, FLOW_REQUIRED
from hypothesis import strategies as st

# Strings that recur (as namespaces and pod names do) and odd ones (escapes, non-ASCII).
texts = st.sampled_from(["shop", "payments", "api-5c6b", "", "node-a"]) | st.text(max_size=30)
# Integers around every varint length boundary, negative ones and the int64 limits.
integers = (
    st.integers(0, 300)
    | st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([2**k + d for k in range(7, 64, 7) for d in (-1, 0, 1) if 2**k + d < 2**63])
)
scalars = st.none() | st.booleans() | integers | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=8,
)
label_keys = st.sampled_from(["app", "app.kubernetes.io/name", "app_kubernetes_io/name", "tier"])


def _value_of(t: type) -> st.SearchStrategy[Any]:
    if t is int:
        return integers
    if t is list:
        return st.lists(st.sampled_from(["SYN", "ACK", "FIN", "RST"]), max_size=4, unique=True)
    return texts


@st.composite
def flow_records(draw: st.DrawFn, odd_types: bool = False) -> dict[str, Any]:
    """A flow record: every required key, some optional keys and labels, some unknown
    keys, in random order. ``odd_types``: contract keys may hold any JSON value (for
    encoders that must cope with records that were not validated), except the ones
    the ECS mapping computes with."""
    record: dict[str, Any] = {}
    computed = {"flow.start_ns", "flow.end_ns"} | {k for k in FLOW_REQUIRED if "delta" in k}
    for key, t in FLOW_REQUIRED.items():
        odd = odd_types and key not in computed and draw(st.booleans())
        if key in computed:  # unix nanoseconds and counters: sums stay within int64
            record[key] = draw(st.integers(0, 2**62))
        else:
            record[key] = draw(json_values if odd else _value_of(t))
    for key in draw(st.lists(st.sampled_from(sorted(FLOW_OPTIONAL)), max_size=12, unique=True)):
        record[key] = draw(json_values if odd_types else _value_of(FLOW_OPTIONAL[key]))
    for side in draw(st.lists(st.sampled_from(["source", "destination"]), max_size=2)):
        record[f"{side}.k8s.pod.labels.{draw(label_keys)}"] = draw(texts)
    extra = draw(st.dictionaries(st.sampled_from(["x.custom", "source.odd", "k"]), json_values))
    record.update(extra)
    items = list(record.items())
    order = draw(st.permutations(range(len(items))))
    return dict(items[i] for i in order)
