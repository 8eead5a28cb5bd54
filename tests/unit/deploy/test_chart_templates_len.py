"""The chart renderer's ``len``: Go's builtin, which counts a string's UTF-8 bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart_templates import TemplateError, render


def render_one(template: str, values: dict[str, Any], tmp_path: Path) -> str:
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("name: t\nversion: 1.0.0\nappVersion: '2'\n")
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "templates" / "t.yaml").write_text(template)
    return render(tmp_path)["t.yaml"]


def test_len_counts_bytes_of_a_string_and_items_of_a_list_or_map(tmp_path: Path) -> None:
    template = (
        "{{ len .Values.ascii }} {{ len .Values.accented }} {{ len .Values.euro }} "
        "{{ len .Values.empty }} {{ len .Values.items }} {{ len .Values.map }} "
        "{{ gt (len .Values.accented) 3 }}\n"
    )
    values = {"ascii": "abc", "accented": "éé", "euro": "€", "empty": "",
              "items": ["é", "x"], "map": {"a": 1}}  # fmt: skip
    assert render_one(template, values, tmp_path) == "3 4 3 0 2 1 true\n"


@pytest.mark.parametrize(("value", "error"), [(1, "len of type float64"), (None, "nil")])
def test_len_refuses_what_go_refuses(value: Any, error: str, tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=error):
        render_one("{{ len .Values.v }}\n", {"v": value}, tmp_path)
