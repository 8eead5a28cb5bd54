"""Reading a Helm chart without helm: strip template actions so the YAML can be parsed,
and find every ``.Values`` path a template refers to.

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

import re
from collections.abc import Iterator

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
