"""Reading a Helm chart without helm: strip template actions so the YAML can be parsed,
find every ``.Values`` path a template refers to, and render the chart for given values
(:func:`render`, :func:`render_objects`; see "rendering" below).

:func:`strip_actions` is deliberately simple — it does not evaluate anything:

- a line holding nothing but actions (``{{- if ... }}``, ``{{- end }}``, ``{{- range }}``,
  ``{{- include ... | nindent 4 }}``, ``{{- toYaml ... | nindent 8 }}``, comments) is
  dropped: such actions control structure or splice in whole YAML blocks, so without
  them the surrounding YAML must still be well formed (an emptied block parses as null);
- any other action, inside a line, becomes the scalar ``PLACEHOLDER`` (``{{-``/``-}}``
  whitespace trimming is ignored: it only matters for the rendered text);
- a comment action spanning several lines (``{{/* ... */}}``) is removed first.

Both branches of an ``if``/``else`` remain, so a template whose branches only make sense
apart would not parse — the chart's templates avoid that shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = "PLACEHOLDER"

_COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.DOTALL)
_ACTION = re.compile(r"\{\{-?.*?-?\}\}")
_VALUES = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_RANGE_LIST = re.compile(r"range\s+\$(\w+)\s*:=\s*list((?:\s+\"[\w-]+\")+)")


def strip_actions(text: str) -> str:
    """Template text → YAML text (see the module docstring)."""
    text = _COMMENT.sub("", text)
    out = []
    for line in text.splitlines():
        if line.strip() and not _ACTION.sub("", line).strip():
            continue  # the line is only actions
        out.append(_ACTION.sub(PLACEHOLDER, line))
    return "\n".join(out) + "\n"


def value_paths(text: str) -> set[tuple[str, ...]]:
    """Every ``.Values.a.b`` path referred to, as ``("a", "b")``.

    Also expands the one dynamic form the chart uses: inside
    ``range $c := list "x" "y"`` with ``$values := index $.Values $c``, ``$values.k``
    refers to ``x.k`` and ``y.k``.
    """
    paths = {tuple(m.group(1)[1:].split(".")) for m in _VALUES.finditer(text)}
    for m in _RANGE_LIST.finditer(text):
        var, names = m.group(1), re.findall(r'"([\w-]+)"', m.group(2))
        alias = re.search(rf"\$(\w+)\s*:=\s*index\s+\$\.Values\s+\${var}\b", text)
        if not alias:
            continue
        for key in re.findall(rf"\${alias.group(1)}((?:\.\w+)+)", text):
            paths |= {(name, *key[1:].split(".")) for name in names}
    return paths


def values_keys(text: str) -> Iterator[tuple[tuple[str, ...], bool]]:
    """(path, commented) for every mapping key of a values.yaml, in file order.

    A key is commented when a ``#`` line sits directly above it or it has an inline
    ``# ...``. Keys inside sequence items belong to the value and are not listed.
    """
    stack: list[tuple[int, str]] = []
    previous_is_comment = False
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped:
            previous_is_comment = False
            continue
        if stripped.startswith("#"):
            previous_is_comment = True
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        m = re.match(r"([A-Za-z_][\w.-]*|\"[^\"]+\")\s*:(\s|$)", stripped)
        if m and not stripped.startswith("- "):
            key = m.group(1).strip('"')
            inline = bool(re.search(r"\s#\s", stripped))
            stack.append((indent, key))
            yield tuple(k for _, k in stack), previous_is_comment or inline
        previous_is_comment = False


# ---------------------------------------------------------------- rendering
# A small evaluator of the Go-template subset the chart uses, with Helm's and sprig's
# meaning of each function, so tests can check what `helm template` would produce for
# given values (which env vars a container gets, that `required` stops a bad install)
# without helm. Values follow Helm's own loading: every number is a float64, printed as
# Go prints one (``1073741824`` → ``1.073741824e+09``), which is why numeric settings
# pass through ``int64`` before ``quote``. Anything outside the subset raises
# :class:`TemplateError` rather than rendering something helm would not.


class TemplateError(Exception):
    """The template uses something this renderer does not know, or is wrong as Go text."""


class TemplateFailure(Exception):
    """``required`` or ``fail`` stopped rendering; helm would print this message."""


_TAG = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")
    |(?P<raw>`[^`]*`)
    |(?P<assign>:=|=)
    |(?P<punct>[()|,])
    |(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = ("if", "else", "end", "range", "with", "define")

Node = tuple[Any, ...]


def _lex(text: str) -> list[tuple[str, str]]:
    """Text and action tokens, with ``{{-`` / ``-}}`` trimming applied."""
    tokens: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _TAG.finditer(text):
        chunk = text[pos : m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        tokens.append(("text", chunk))
        tokens.append(("action", m.group(2).strip()))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = text[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _expression_tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(source):
        if not source[pos:].strip():
            break
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot read {source[pos:]!r} in {source!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Expression:
    """Parses one action's pipeline: ``[$a[, $b] :=] command | command ...``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _expression_tokens(source)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def pipeline(self) -> Node:
        declare: list[str] = []
        assign = ""
        for shape in (["var", "assign"], ["var", "punct", "var", "assign"]):  # $x := / $k, $v :=
            window = self.tokens[self.pos : self.pos + len(shape)]
            if [kind for kind, _ in window] == shape:
                declare = [text for kind, text in window if kind == "var"]
                assign = window[-1][1]
                self.pos += len(shape)
                break
        commands = [self.command()]
        while self.peek() == ("punct", "|"):
            self.take()
            commands.append(self.command())
        return ("pipe", declare, assign, commands)

    def command(self) -> list[Node]:
        operands: list[Node] = []
        while (token := self.peek()) is not None and token not in (("punct", "|"), ("punct", ")")):
            operands.append(self.operand())
        if not operands:
            raise TemplateError(f"empty command in {self.source!r}")
        return operands

    def operand(self) -> Node:
        kind, text = self.take()
        if kind == "str":
            return ("lit", bytes(text[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "raw":
            return ("lit", text[1:-1])
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text))
        if kind == "var":
            name, *fields = text.split(".")
            return ("var", name, fields)
        if kind == "field":
            return ("field", [f for f in text.split(".") if f])
        if kind == "ident":
            constants = {"true": True, "false": False, "nil": None}
            return ("lit", constants[text]) if text in constants else ("func", text)
        if (kind, text) == ("punct", "("):
            inner = self.pipeline()
            if self.take() != ("punct", ")"):
                raise TemplateError(f"unbalanced parentheses in {self.source!r}")
            return inner
        raise TemplateError(f"unexpected {text!r} in {self.source!r}")


def _parse_pipeline(source: str) -> Node:
    expression = _Expression(source)
    pipe = expression.pipeline()
    if expression.peek() is not None:
        raise TemplateError(f"trailing {expression.peek()!r} in {source!r}")
    return pipe


def _keyword(action: str) -> tuple[str, str]:
    word, _, rest = action.partition(" ")
    return (word, rest.strip()) if word in _KEYWORDS else ("", action)


def _parse(
    tokens: list[tuple[str, str]], pos: int, defines: dict[str, list[Node]]
) -> tuple[list[Node], int, str]:
    """Nodes up to an ``else``/``end`` (returned as the stop action) or the end."""
    nodes: list[Node] = []
    while pos < len(tokens):
        kind, text = tokens[pos]
        pos += 1
        if kind == "text":
            if text:
                nodes.append(("text", text))
            continue
        if text.startswith("/*"):
            continue  # a comment
        word, rest = _keyword(text)
        if word in ("else", "end"):
            return nodes, pos, text
        if word == "define":
            body, pos, stop = _parse(tokens, pos, defines)
            if stop != "end":
                raise TemplateError(f"define {rest} has {stop!r}")
            defines[str(_parse_pipeline(rest)[3][0][0][1])] = body
        elif word in ("if", "range", "with"):
            node, pos = _parse_block(word, rest, tokens, pos, defines)
            nodes.append(node)
        else:
            nodes.append(("out", _parse_pipeline(text)))
    return nodes, pos, ""


def _parse_block(
    word: str, rest: str, tokens: list[tuple[str, str]], pos: int, defines: dict[str, list[Node]]
) -> tuple[Node, int]:
    body, pos, stop = _parse(tokens, pos, defines)
    otherwise: list[Node] = []
    if stop.startswith("else"):
        chained = stop[len("else") :].strip()
        if chained.startswith("if "):  # else if: a nested if sharing this end
            nested, pos = _parse_block("if", chained[3:], tokens, pos, defines)
            return (word, _parse_pipeline(rest), body, [nested]), pos
        otherwise, pos, stop = _parse(tokens, pos, defines)
    if stop != "end":
        raise TemplateError(f"{word} {rest} is not closed by end")
    return (word, _parse_pipeline(rest), body, otherwise), pos


def _go_float(value: float) -> str:
    """Go's %v of a float64: the shortest digits that read back the same (Python's repr
    finds the same ones), in exponent form when the exponent is below -4 or 6 and over —
    so 86400 prints as ``86400`` but 1073741824 as ``1.073741824e+09``."""
    if value == 0:
        return "0"
    number = Decimal(repr(value))
    exponent = number.adjusted()
    if -4 <= exponent < 6:
        return format(number.normalize(), "f")
    return f"{format(number.scaleb(-exponent).normalize(), 'f')}e{exponent:+03d}"


def _go_string(value: Any) -> str:
    """A value as Go's fmt %v prints it (nil as Helm prints it: empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_string(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _truthy(value: Any) -> bool:
    return (
        value is not None
        and value is not False
        and value != 0
        and value != ""
        and (not isinstance(value, (list, dict)) or bool(value))
    )


def _for_yaml(value: Any) -> Any:
    """Helm's float64 numbers back to ints where whole, as toYaml writes them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _for_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_yaml(v) for v in value]
    return value


def _to_int(value: Any) -> int:
    """sprig's int/int64 (spf13/cast): numbers truncate, numeric strings parse, else 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    try:
        return int(str(value), 0)
    except ValueError:
        return 0


def _to_float(value: Any) -> float:
    """sprig's float64 (spf13/cast): numbers convert, numeric strings parse, else 0."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _printf(fmt: str, *args: Any) -> str:
    queue = list(args)

    def verb(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        value = queue.pop(0)
        return str(_to_int(value)) if m.group(0) == "%d" else _go_string(value)

    return re.sub(r"%[svd%]", verb, fmt)


def _kind(value: Any) -> str:
    kinds = {bool: "bool", str: "string", float: "float64", int: "int", list: "slice",
             dict: "map"}  # fmt: skip
    return "invalid" if value is None else kinds.get(type(value), type(value).__name__)


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateFailure(message)
    return value


def _fail(message: str) -> Any:
    raise TemplateFailure(message)


def _len(value: Any) -> int:
    """Go's builtin len: a string's length in bytes (Go holds strings as UTF-8, so
    ``len "é"`` is 2), a list's or map's in items; Go refuses anything else."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (list, dict)):
        return len(value)
    raise TemplateError(f"len of {'nil pointer' if value is None else 'type ' + _kind(value)}")


def _indent(n: Any, text: str) -> str:
    pad = " " * _to_int(n)
    return "\n".join(pad + line for line in str(text).split("\n"))


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(_for_yaml(value), default_flow_style=False, sort_keys=True).rstrip("\n")


_FUNCTIONS: dict[str, Any] = {
    "quote": lambda *v: " ".join(json.dumps(_go_string(x)) for x in v if x is not None),
    "toString": _go_string,
    "toYaml": _to_yaml,
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "default": lambda fallback, *given: given[0] if given and _truthy(given[0]) else fallback,
    "empty": lambda v: not _truthy(v),
    "required": _required,
    "fail": _fail,
    "trunc": lambda n, s: s[: _to_int(n)] if _to_int(n) >= 0 else s[_to_int(n) :],
    "trimSuffix": lambda suffix, s: s[: -len(suffix)] if suffix and s.endswith(suffix) else s,
    "trimPrefix": lambda prefix, s: s[len(prefix) :] if prefix and s.startswith(prefix) else s,
    "trim": lambda s: str(s).strip(),
    "contains": lambda sub, s: sub in _go_string(s),
    "hasPrefix": lambda prefix, s: _go_string(s).startswith(prefix),
    "replace": lambda old, new, s: _go_string(s).replace(old, new),
    "printf": _printf,
    "ternary": lambda yes, no, condition: yes if _truthy(condition) else no,
    "join": lambda sep, items: sep.join(_go_string(i) for i in (items or [])),
    "splitList": lambda sep, s: _go_string(s).split(sep),
    "has": lambda needle, items: needle in (items or []),
    "hasKey": lambda mapping, key: key in mapping,
    "dict": lambda *kv: dict(zip(kv[::2], kv[1::2], strict=True)),
    "list": lambda *items: list(items),
    "len": _len,
    "int": _to_int,
    "int64": _to_int,
    "float64": _to_float,
    "kindIs": lambda kind, value: _kind(value) == kind,
    "not": lambda v: not _truthy(v),
    "eq": lambda a, *others: any(a == o for o in others),
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "lt": lambda a, b: a < b,
    "ge": lambda a, b: a >= b,
    "le": lambda a, b: a <= b,
}


class _Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def run(self, nodes: list[Node], dot: Any, scopes: list[dict[str, Any]]) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "out":
                value = self.pipe(node[1], dot, scopes)
                if not node[1][1]:  # a declaration prints nothing
                    out.append(_go_string(value))
            elif kind in ("if", "with"):
                value = self.pipe(node[1], dot, scopes, declare_in=(scope := {}))
                inner = [*scopes, scope]
                if _truthy(value):
                    out.append(self.run(node[2], value if kind == "with" else dot, inner))
                else:
                    out.append(self.run(node[3], dot, inner))
            elif kind == "range":
                out.append(self.range(node, dot, scopes))
        return "".join(out)

    def range(self, node: Node, dot: Any, scopes: list[dict[str, Any]]) -> str:
        _, (_, names, _, commands), body, otherwise = node
        items = self.pipe(("pipe", [], "", commands), dot, scopes)
        if not _truthy(items):
            return self.run(otherwise, dot, scopes)
        pairs = sorted(items.items()) if isinstance(items, dict) else list(enumerate(items))
        out = []
        for key, value in pairs:
            scope = dict(zip(names, [value] if len(names) == 1 else [key, value], strict=False))
            out.append(self.run(body, value, [*scopes, scope]))
        return "".join(out)

    def pipe(
        self,
        pipe: Node,
        dot: Any,
        scopes: list[dict[str, Any]],
        declare_in: dict[str, Any] | None = None,
    ) -> Any:
        _, names, assign, commands = pipe
        value: Any = None
        for i, command in enumerate(commands):
            value = self.command(command, dot, scopes, piped=(value,) if i else ())
        if names:
            if assign == "=":
                next(s for s in reversed(scopes) if names[0] in s)[names[0]] = value
            else:
                (declare_in if declare_in is not None else scopes[-1])[names[0]] = value
        return value

    def command(
        self, operands: list[Node], dot: Any, scopes: list[dict[str, Any]], piped: tuple[Any, ...]
    ) -> Any:
        head = operands[0]
        if head[0] != "func":
            if len(operands) > 1 or piped:
                raise TemplateError(f"{head} is not a function")
            return self.operand(head, dot, scopes)
        args = [self.operand(o, dot, scopes) for o in operands[1:]] + list(piped)
        name = head[1]
        if name in ("include", "template"):
            return self.include(args[0], args[1] if len(args) > 1 else None)
        if name == "index":
            value = args[0]
            for key in args[1:]:
                value = value.get(key) if isinstance(value, dict) else value[_to_int(key)]
            return value
        if name in ("and", "or"):
            for arg in args:
                if _truthy(arg) == (name == "or"):
                    return arg
            return args[-1]
        if name not in _FUNCTIONS:
            raise TemplateError(f"function {name!r} is not supported by this renderer")
        return _FUNCTIONS[name](*args)

    def operand(self, node: Node, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "pipe":
            return self.pipe(node, dot, scopes)
        if kind == "field":
            return self.fields(dot, node[1], ".")
        if kind == "var":
            for scope in reversed(scopes):
                if node[1] in scope:
                    return self.fields(scope[node[1]], node[2], node[1])
            raise TemplateError(f"undefined variable {node[1]}")
        raise TemplateError(f"{node} cannot be evaluated")

    @staticmethod
    def fields(value: Any, names: list[str], start: str) -> Any:
        path = start
        for name in names:
            if not isinstance(value, dict):
                raise TemplateError(f"nil pointer evaluating {path}.{name}")
            value = value.get(name)
            path += f".{name}"
        return value

    def include(self, name: str, data: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template {name!r}")
        return self.run(self.defines[name], data, [{"$": data}])


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _helm_numbers(value: Any) -> Any:
    """Helm reads values.yaml through JSON: every number becomes a float64."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _helm_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_helm_numbers(v) for v in value]
    return value


def render(
    chart: Path,
    values: dict[str, Any] | None = None,
    release: str = "flowscope",
    namespace: str = "flowscope",
) -> dict[str, str]:
    """``helm template``: each template's rendered text by file name, with ``values``
    merged over the chart's values.yaml. Raises :class:`TemplateFailure` where helm
    would stop (``required``, ``fail``)."""
    defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    root = {
        "Values": _helm_numbers(_merge(defaults, values or {})),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"],
                  "AppVersion": meta.get("appVersion", "")},
    }  # fmt: skip
    defines: dict[str, list[Node]] = {}
    parsed = {}
    for path in sorted((chart / "templates").iterdir()):
        nodes, _, stop = _parse(_lex(path.read_text()), 0, defines)
        if stop:
            raise TemplateError(f"{path.name}: unexpected {stop!r}")
        parsed[path.name] = nodes
    renderer = _Renderer(defines)
    return {
        name: renderer.run(nodes, root, [{"$": root}])
        for name, nodes in parsed.items()
        if not name.startswith("_")
    }


def render_objects(chart: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders to (its .yaml templates)."""
    rendered = render(chart, values)
    return [
        doc
        for name, text in rendered.items()
        if name.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
