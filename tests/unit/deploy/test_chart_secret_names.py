"""Names and keys given as values reach the manifest as strings, whatever they look like.

A Secret's name is a DNS subdomain and its keys ``[-._a-zA-Z0-9]+``, so ``2024``, ``1``
or ``on`` are names Kubernetes accepts; written unquoted into the manifest, YAML reads
them as a number or a boolean, and the API server refuses the object (it wants a string
there), failing the install. The same holds for an image pull Secret named by digits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.chart_templates import render_objects
from tests.unit.deploy.test_chart_schema import CHART, problems

# Kubernetes accepts each of these as a Secret name or key; YAML 1.1, as Helm and the
# API server's decoder read the manifest, would make a number or a boolean of each.
LOOKALIKES = ["2024", "1", "on", "yes", "true", "0x10", "1_000", "0"]


def scalars(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from scalars(value, (*path, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from scalars(value, path)
    else:
        yield path, node


def named(values: dict[str, Any]) -> list[tuple[str, tuple[str, ...], Any]]:
    """Every Secret reference, Secret volume and image pull Secret rendered."""
    fields = {"secretKeyRef", "secret", "imagePullSecrets"}
    assert problems(values) == []
    return [
        (o["kind"], path, leaf)
        for o in render_objects(CHART, values)
        for path, leaf in scalars(o.get("spec", {}))
        if fields & set(path)
    ]


def lookalike_values(name: str, key: str) -> list[dict[str, Any]]:
    return [
        {"nats": {"auth": {"existingSecret": name, "userKey": key, "passwordKey": key},
                  "tls": {"existingSecret": name}}},
        {"nats": {"auth": {"existingSecret": name, "tokenKey": key, "credsKey": key}}},
        {"nats": {"auth": {"existingSecret": name, "nkeySeedKey": key}}},
        {"exporter": {"sinks": "elasticsearch,otlp",
                      "otlp": {"headersSecret": name, "tlsSecret": name},
                      "elasticsearch": {"url": "http://es:9200", "caSecret": name,
                                        "auth": {"existingSecret": name, "usernameKey": key,
                                                 "passwordFileKey": key}}}},
        {"exporter": {"elasticsearch": {"auth": {"existingSecret": name, "apiKeyKey": key}}}},
        {"exporter": {"elasticsearch": {"auth": {"existingSecret": name,
                                                 "apiKeyFileKey": key}}}},
        {"exporter": {"elasticsearch": {"auth": {"existingSecret": name, "usernameKey": key,
                                                 "passwordKey": key}}}},
        {"imagePullSecrets": [name]},
    ]  # fmt: skip


@pytest.mark.parametrize("name", LOOKALIKES)
def test_names_and_keys_that_look_like_numbers_or_booleans_stay_strings(name: str) -> None:
    for values in lookalike_values(name, name):
        found = named(values)
        assert [leaf for _, _, leaf in found].count(name) >= 2, values
        wrong = [(kind, ".".join(path), leaf) for kind, path, leaf in found
                 if not isinstance(leaf, str)]  # fmt: skip
        assert wrong == [], values


@pytest.mark.parametrize("name", ["1000", "0x10", "true"])
def test_a_priority_class_named_like_a_number_stays_a_string(name: str) -> None:
    values = {"collector": {"priorityClassName": name}}
    assert problems(values) == []
    (daemonset,) = [o for o in render_objects(CHART, values) if o["kind"] == "DaemonSet"]
    assert daemonset["spec"]["template"]["spec"]["priorityClassName"] == name
