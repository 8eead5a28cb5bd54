"""values.schema.json: Helm refuses at install the values the services would refuse at
start-up (exit 2), and nothing the chart documents.

Helm validates the values, merged over values.yaml, against the chart's schema on
install, upgrade, template and lint. Its regular expressions are Go's (RE2) and
ECMA-262's in editors, so the schema's patterns use neither lookarounds nor inline
flags; Python's ``re`` reads them alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.exporter.settings import SINK_NAMES

from tests.support.chart_templates import TemplateFailure, render_objects, value_paths
from tests.support.deploying import REPO, settings_class

CHART = REPO / "deploy" / "helm" / "flowscope"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
# Values of the NATS subchart: its own chart's to check.
SUBCHART = {("nats", "config"), ("nats", "container")}

# Chart values that become one setting: (component whose settings read it, variable).
SETTING_VALUES = {
    ("log", "format"): ("enricher", "FLOWSCOPE_LOG_FORMAT"),
    ("log", "level"): ("enricher", "FLOWSCOPE_LOG_LEVEL"),
    ("nats", "stream", "maxAge"): ("enricher", "FLOWSCOPE_NATS_STREAM_MAX_AGE"),
    ("nats", "stream", "maxBytes"): ("enricher", "FLOWSCOPE_NATS_STREAM_MAX_BYTES"),
    ("nats", "stream", "replicas"): ("enricher", "FLOWSCOPE_NATS_STREAM_REPLICAS"),
    ("collector", "flows", "activeTimeout"): ("collector", "FLOWSCOPE_FLOWS_ACTIVE_TIMEOUT"),
    ("collector", "flows", "idleTimeout"): ("collector", "FLOWSCOPE_FLOWS_IDLE_TIMEOUT"),
    ("collector", "flows", "maxEntries"): ("collector", "FLOWSCOPE_FLOWS_MAX_ENTRIES"),
    ("collector", "dns", "port"): ("collector", "FLOWSCOPE_DNS_PORT"),
    ("exporter", "sinks"): ("exporter", "FLOWSCOPE_SINKS"),
    ("exporter", "otlp", "protocol"): ("exporter", "FLOWSCOPE_OTLP_PROTOCOL"),
    ("exporter", "otlp", "insecure"): ("exporter", "FLOWSCOPE_OTLP_INSECURE"),
}
# Numbers around every bound the numeric settings have, and numbers written as strings.
# A string is checked for being a number only: its range is the service's to check, so
# the strings here are within every range.
NUMBERS = [-1, 0, 0.5, 1, 2.5, 15, 16, 53, 65535, 65536, 1 << 24, (1 << 24) + 1,
           10737418240, "", "100", "2.5", " 70 ", "1e3", "1_000", "lots", "0x10", "-",
           True, False]  # fmt: skip
BOOLEANS = [True, False, "", "true", "False", " YES ", "on", "Off", "1", "0", 1, 0, 2,
            "maybe", "truthy", "t"]  # fmt: skip


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for key in reversed(path):
        value = {key: value}
    return dict(value)


def problems(values: dict[str, Any]) -> list[str]:
    """What Helm would report for ``values`` given over the chart's defaults."""
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = validator.iter_errors(merged(DEFAULTS, values))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def schema_node(path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] = SCHEMA
    for key in path:
        if key not in node.get("properties", {}):
            return None
        node = node["properties"][key]
    return node


def leaf(component: str, variable: str) -> config.Leaf:
    (found,) = [x for x in config.leaves(settings_class(component)) if x.env == variable]
    return found


def takes_effect(path: tuple[str, ...], value: Any) -> bool:
    """The value reaches its setting and the service loads it; or it is "", which
    leaves the service's default in force. The bundled NATS is a cluster of five, so that
    any stream replicas nats-server takes fit it."""
    component, variable = SETTING_VALUES[path]
    base = {"exporter": {"elasticsearch": {"url": "http://es:9200"}},
            "nats": {"config": {"cluster": {"enabled": True, "replicas": 5}}}}  # fmt: skip
    values = merged(base, nested(path, value))
    try:
        objects = render_objects(CHART, values)
    except TemplateFailure:
        return False
    (workload,) = [
        o for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]  # fmt: skip
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    if variable not in env:
        return value == ""
    try:
        config.load(settings_class(component), {}, env={variable: env[variable]})
    except ConfigError:
        return False
    return True


def candidates(path: tuple[str, ...]) -> list[Any]:
    choices = leaf(*SETTING_VALUES[path]).choices
    if choices is not None:
        return [*choices, *(c.upper() for c in choices if c), "", "verbose", "http"]
    if path == ("exporter", "sinks"):
        return [
            *SINK_NAMES,
            *(f"{a},{b}" for a in SINK_NAMES for b in SINK_NAMES),
            ",".join(SINK_NAMES), " , ".join(reversed(SINK_NAMES)),
            f" {SINK_NAMES[0]} ,,{SINK_NAMES[1]}, ", f",{SINK_NAMES[2]}",
            "", " ", ",", "kafka", f"{SINK_NAMES[0]},kafka", f"{SINK_NAMES[0]} {SINK_NAMES[1]}",
            SINK_NAMES[0].upper(), [SINK_NAMES[0]],
        ]  # fmt: skip
    if leaf(*SETTING_VALUES[path]).hint == bool | None:
        return BOOLEANS
    return NUMBERS


# ---------------------------------------------------------------- the schema


def test_the_schema_is_draft_07_and_accepts_the_defaults() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert problems({}) == []


def test_patterns_are_read_alike_by_go_and_ecma_262() -> None:
    """No lookaround, backreference or inline flag: Go's RE2 (Helm) has no lookaround
    or backreference, ECMA-262 (editors) no inline flag."""

    def patterns(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
            return own + [p for v in node.values() for p in patterns(v)]
        return [p for v in node for p in patterns(v)] if isinstance(node, list) else []

    found = patterns(SCHEMA)
    assert len(found) >= 5
    assert [p for p in found if "(?" in p or re.search(r"\\[1-9]", p)] == []


def test_every_chart_value_is_in_the_schema() -> None:
    """A value added to values.yaml gets its type here too; maps passed through to
    Kubernetes (resources, nodeSelector, ...) are objects whose keys are not listed."""

    def missing(values: dict[str, Any], path: tuple[str, ...]) -> list[str]:
        out = []
        for key, value in values.items():
            here = (*path, key)
            node = schema_node(here)
            if here in SUBCHART:
                continue
            if node is None:
                out.append(".".join(here))
            elif isinstance(value, dict) and "properties" in node:
                out += missing(value, here)
        return out

    assert missing(DEFAULTS, ()) == []


@pytest.mark.parametrize("path", [p for p in SETTING_VALUES if leaf(*SETTING_VALUES[p]).choices])
def test_enumerations_are_the_choices_of_the_settings(path: tuple[str, ...]) -> None:
    node = schema_node(path)
    assert node is not None
    assert node["enum"] == list(leaf(*SETTING_VALUES[path]).choices or ())


@pytest.mark.parametrize("path", SETTING_VALUES, ids=".".join)
def test_a_setting_value_passes_exactly_when_the_service_would_load_it(
    path: tuple[str, ...],
) -> None:
    """Before, a value the service refuses rendered fine and every pod of the component
    exited 2 at start-up; now the install fails. The other way round, the schema must
    not refuse what the service takes."""
    disagree = [
        (value, "schema accepts" if not problems(nested(path, value)) else "schema refuses")
        for value in candidates(path)
        if (not problems(nested(path, value))) != takes_effect(path, value)
    ]
    assert disagree == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"log": {"level": "verbose"}},
         "log.level: 'verbose' is not one of ['debug', 'info', 'warning', 'error']"),
        ({"exporter": {"otlp": {"protocol": "http"}}},
         "exporter.otlp.protocol: 'http' is not one of ['', 'grpc', 'http/protobuf']"),
        ({"collector": {"flows": {"maxEntries": 10}}},
         "collector.flows.maxEntries: 10 is less than the minimum of 16"),
    ],
)  # fmt: skip
def test_the_message_names_the_value_and_what_it_may_be(
    values: dict[str, Any], message: str
) -> None:
    assert problems(values) == [message]


def _profiles_the_template_accepts(define: str) -> list[str]:
    body = (CHART / "templates" / "_helpers.tpl").read_text().split(f'define "{define}"')[1]
    found = re.search(r"has \.profile \(list ((?:\"\w+\"\s*)+)\)", body)
    assert found, define
    return re.findall(r"\"(\w+)\"", found.group(1))


@pytest.mark.parametrize(
    ("name", "define"),
    [("appArmor", "flowscope.collectorAppArmorProfile"),
     ("seccomp", "flowscope.collectorSeccompProfile")],
)  # fmt: skip
def test_profiles_are_the_ones_the_templates_accept(name: str, define: str) -> None:
    node = schema_node(("collector", name, "profile"))
    assert node is not None
    resolved = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
    assert sorted(resolved["enum"]) == sorted(["", *_profiles_the_template_accepts(define)])


@pytest.mark.parametrize(
    "values",
    [
        {"collector": {"metricsPort": 0}},
        {"enricher": {"metricsPort": "9090"}},
        {"exporter": {"replicas": -1}},
        {"image": {"pullPolicy": "always"}},
        {"imagePullSecrets": [{"name": "registry"}]},
        {"nats": {"enabled": "false"}},
        {"exporter": {"sinks": ["stdout", "otlp"]}},
        {"enricher": {"extraEnv": {"FLOWSCOPE_JOIN_MERGE_WINDOW": {"seconds": 2}}}},
        {"collector": {"maxUnavailable": "ten"}},
        {"collector": {"seccomp": {"profile": "runtime/default"}}},
    ],
    ids=lambda v: json.dumps(v),
)
def test_values_kubernetes_or_the_templates_would_mangle_fail(values: dict[str, Any]) -> None:
    assert problems(values) != []


# Every alternative the values' comments and docs/deploy.md give, at once where they
# can go together.
DOCUMENTED = [
    {
        "image": {"repository": "registry.example/flowscope", "tag": "0.2.0", "pullPolicy": "Always"},
        "imagePullSecrets": ["registry"],
        "nameOverride": "fs", "fullnameOverride": "flow", "clusterName": "prod-eu1",
        "log": {"format": "text", "level": "debug"},
        "nats": {
            "enabled": False, "externalUrl": "tls://nats-1:4222,tls://nats-2:4222",
            "auth": {"existingSecret": "nats-auth", "userKey": "user", "passwordKey": "pw",
                     "tokenKey": "token", "credsKey": "flowscope.creds"},
            "tls": {"existingSecret": "nats-tls", "clientCertificate": True},
            "stream": {"maxAge": 172800, "maxBytes": 10737418240, "replicas": 3},
            "config": {"cluster": {"enabled": True, "replicas": 3}},
            "natsBox": {"enabled": False},
        },
        "collector": {
            "metricsPort": 9191,
            "interfaces": {"include": ["eth*", "ens*"], "exclude": ["lo"]},
            "flows": {"activeTimeout": 30, "idleTimeout": 2.5, "maxEntries": 1000000},
            "dns": {"port": 5353},
            "extraEnv": {"FLOWSCOPE_PUBLISH_BUFFER_BYTES": 67108864,
                         "FLOWSCOPE_SOCKETS_SNAPSHOT": False, "FLOWSCOPE_DNS_CAPTURE_BYTES": "512"},
            "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": 1}},
            "priorityClassName": "system-node-critical",
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                             "effect": "NoSchedule"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "podAnnotations": {"prometheus.io/scrape": "true"},
            "appArmor": {"profile": "Localhost", "localhostProfile": "flowscope",
                         "annotation": True},
            "seccomp": {"profile": "Localhost", "localhostProfile": "profiles/flowscope.json"},
            "maxUnavailable": "10%",
        },
        "enricher": {
            "replicas": 3, "metricsPort": 9090,
            "kubernetes": {"labelKeys": ["app", "team"]},
            "extraEnv": {"FLOWSCOPE_JOIN_SOCKET_MAX_ENTRIES": 1000000},
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        },
        "exporter": {
            "replicas": 2, "sinks": "stdout,otlp,elasticsearch",
            "otlp": {"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc",
                     "insecure": True, "headersSecret": "otlp-headers", "tlsSecret": "otlp-tls",
                     "clientCertificate": True},
            "elasticsearch": {"url": "https://elasticsearch.logging:9200",
                              "auth": {"existingSecret": "es-auth", "usernameKey": "username",
                                       "passwordFileKey": "password"},
                              "caSecret": "es-tls", "clientCertificate": True},
            "extraEnv": {"OTEL_EXPORTER_OTLP_COMPRESSION": "none"},
        },
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kps"}},
        "networkPolicy": {"enabled": True,
                          "metricsFrom": [{"namespaceSelector": {"matchLabels": {"x": "y"}}}]},
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    },
    {
        "nats": {"auth": {"existingSecret": "nats-auth", "nkeySeedKey": "user.nk"},
                 "stream": {"maxAge": 0.5, "maxBytes": "2048", "replicas": ""}},
        "collector": {"interfaces": {"include": "eth0"}, "appArmor": {"profile": "Unconfined"},
                      "seccomp": {"profile": ""}, "maxUnavailable": 2},
        "exporter": {"sinks": "otlp, elasticsearch",
                     "otlp": {"protocol": "http/protobuf", "insecure": "false"},
                     "elasticsearch": {"url": "http://es:9200",
                                       "auth": {"existingSecret": "es-auth",
                                                "apiKeyFileKey": "api-key"}}},
    },
    {"collector": {"appArmor": {"profile": "RuntimeDefault"},
                   "seccomp": {"profile": "RuntimeDefault"}},
     "exporter": {"elasticsearch": {"auth": {"existingSecret": "es-auth", "apiKeyKey": "k"}}}},
]  # fmt: skip


@pytest.mark.parametrize("values", DOCUMENTED, ids=["everything", "alternatives", "more"])
def test_every_documented_alternative_passes_and_renders(values: dict[str, Any]) -> None:
    assert problems(values) == []
    assert render_objects(CHART, values)


# ---------------------------------------------------------------- unknown keys
#
# Helm ignores a value no template reads, so a misspelt key (`exporter.elastcsearch.url`)
# installed the defaults while its author believed it configured. Every object whose keys
# the chart defines is closed (`additionalProperties: false`); the maps handed to
# Kubernetes whole stay free-form, and so does `nats`, shared with the subchart's values.

# Objects with keys of their own that stay open: `nats` also holds the subchart's values.
OPEN_OBJECTS = {("nats",)}
# Free-form maps not handed to Kubernetes whole: `extraEnv` becomes variables (its
# values are typed), `global` is Helm's, shared with subcharts and set on a subchart.
FREE_FORM_OWN = {"extraEnv", "global"}
TEMPLATES = sorted((CHART / "templates").glob("*"))
_PASSED_THROUGH = re.compile(
    r"toYaml \$?\.Values\.([\w.]+)|with \$?\.Values\.([\w.]+) -?\}\}\s*\{\{-? toYaml \. "
)
_SET = re.compile(r"--set ([\w.]+)=(\S+)")


def resolved(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return dict(SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]])
    return node


def schema_objects(
    node: dict[str, Any] = SCHEMA, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, node) of every object the schema describes, nested ones included."""
    node = resolved(node)
    own = [(path, node)] if node.get("type") == "object" else []
    children = node.get("properties", {}).items()
    return own + [found for key, child in children for found in schema_objects(child, (*path, key))]


CLOSED = [path for path, node in schema_objects() if node.get("additionalProperties") is False]
FREE_FORM = [path for path, node in schema_objects() if "properties" not in node]


def accepts_key(path: tuple[str, ...]) -> bool:
    """Whether the schema lets a values file hold ``path`` (whatever its value)."""
    node: dict[str, Any] = SCHEMA
    for key in path:
        node = resolved(node)
        if key not in node.get("properties", {}):
            # A free-form map or open object takes anything below it.
            return node.get("additionalProperties") is not False
        node = node["properties"][key]
    return True


def key_paths(values: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in values.items():
        out.append((*path, key))
        if isinstance(value, dict):
            out += key_paths(value, (*path, key))
    return out


def default(path: tuple[str, ...]) -> Any:
    value: Any = DEFAULTS
    for key in path:
        value = value[key]
    return value


def misspelt(key: str) -> str:
    """The key with its second letter dropped (`elasticsearch` → `elsticsearch`)."""
    return key[0] + key[2:]


def unexpected(path: tuple[str, ...], key: str) -> str:
    return f"{'.'.join(path)}: Additional properties are not allowed ('{key}' was unexpected)"


def test_every_object_the_chart_defines_keys_for_is_closed() -> None:
    """Only the free-form maps and `nats` take keys the schema does not list."""
    open_with_keys = [
        path for path, node in schema_objects()
        if "properties" in node and node.get("additionalProperties") is not False
    ]  # fmt: skip
    assert sorted(open_with_keys) == sorted(OPEN_OBJECTS)
    assert len(CLOSED) >= 20


@pytest.mark.parametrize("path", key_paths(DEFAULTS), ids=".".join)
def test_every_key_of_values_yaml_is_accepted(path: tuple[str, ...]) -> None:
    """Alone in a values file, and over the defaults, as Helm merges it."""
    assert accepts_key(path)
    alone = nested(path, default(path))
    assert sorted(e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(alone)) == []
    assert problems(alone) == []


@pytest.mark.parametrize(
    "path",
    sorted({p for t in TEMPLATES for p in value_paths(t.read_text())}),
    ids=".".join,
)
def test_every_value_a_template_reads_is_accepted(path: tuple[str, ...]) -> None:
    assert accepts_key(path)


@pytest.mark.parametrize("path", CLOSED, ids=lambda p: ".".join(p) or "(root)")
def test_a_closed_object_refuses_an_unknown_key_naming_it(path: tuple[str, ...]) -> None:
    assert problems(nested((*path, "unknownKey"), "x")) == [unexpected(path, "unknownKey")]


@pytest.mark.parametrize(
    ("path", "key"),
    [(path, key) for path in CLOSED for key in resolved(schema_node(path) or SCHEMA)["properties"]],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else v,
)
def test_a_misspelt_key_is_refused_naming_it(path: tuple[str, ...], key: str) -> None:
    """Before, `exporter.elastcsearch.url` and the like installed the defaults."""
    typo = misspelt(key)
    assert typo not in resolved(schema_node(path) or SCHEMA)["properties"]
    value = default((*path, key)) if (*path, key) in key_paths(DEFAULTS) else "x"
    assert problems(nested((*path, typo), value)) == [unexpected(path, typo)]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"exporter": {"elastcsearch": {"url": "https://es.logging:9200"}}},
         unexpected(("exporter",), "elastcsearch")),
        ({"collector": {"resourcess": {"limits": {"memory": "2Gi"}}}},
         unexpected(("collector",), "resourcess")),
        ({"clustrName": "prod-eu1"}, unexpected((), "clustrName")),
        ({"nats": {"auth": {"existingSecert": "nats-auth"}}},
         unexpected(("nats", "auth"), "existingSecert")),
    ],
    ids=["exporter.elastcsearch", "collector.resourcess", "clustrName", "nats.auth.existingSecert"],
)  # fmt: skip
def test_the_reported_typos_fail_the_install(values: dict[str, Any], message: str) -> None:
    assert problems(values) == [message]


def test_free_form_maps_are_the_ones_handed_to_kubernetes_whole() -> None:
    """A map the templates render with toYaml is Kubernetes' to check, key by key."""
    found = {
        tuple((m.group(1) or m.group(2)).split("."))
        for t in TEMPLATES
        for m in _PASSED_THROUGH.finditer(t.read_text())
    }
    maps = {p for p in FREE_FORM if p[-1] not in FREE_FORM_OWN}
    assert maps == {p for p in found if resolved(schema_node(p) or {}).get("type") == "object"}
    assert len(maps) >= 10


@pytest.mark.parametrize("path", FREE_FORM, ids=".".join)
def test_a_free_form_map_accepts_any_key(path: tuple[str, ...]) -> None:
    keys = {"example.com/any-key": "x", "nvidia.com/gpu": "1", "Any_Name": "true"}
    assert problems(nested(path, keys)) == []


def test_free_form_lists_and_the_subchart_values_accept_anything() -> None:
    anything = [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}]
    assert problems({
        "collector": {"tolerations": anything}, "enricher": {"tolerations": anything},
        "exporter": {"tolerations": anything},
        "networkPolicy": {"metricsFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        "nats": {"natsBox": {"enabled": False}, "global": {"labels": {"a": "b"}},
                 "config": {"cluster": {"enabled": True}}, "podTemplate": {"x": 1}},
        "global": {"imageRegistry": "registry.example"},
    }) == []  # fmt: skip


def test_a_parent_charts_condition_is_accepted() -> None:
    """As a subchart installed on ``condition: flowscope.enabled``, the chart is given
    ``enabled`` among its values."""
    assert problems({"enabled": True}) == []
    assert problems({"enabled": "yes"}) != []


@pytest.mark.parametrize(
    "flag",
    [m.group(0) for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
     for m in _SET.finditer(f.read_text())],
)  # fmt: skip
def test_every_documented_set_flag_is_accepted(flag: str) -> None:
    found = _SET.fullmatch(flag)
    assert found
    assert problems(nested(tuple(found.group(1).split(".")), yaml.safe_load(found.group(2)))) == []
