"""docs/records.md documents every key and raw field that the code defines."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flowscope.core import records

DOC = (Path(__file__).parents[3] / "docs" / "records.md").read_text()


def _documented(key: str) -> bool:
    return f"`{key}`" in DOC


@pytest.mark.parametrize("key", [*records.FLOW_REQUIRED, *records.DNS_REQUIRED])
def test_required_keys_documented(key: str) -> None:
    assert _documented(key), key


@pytest.mark.parametrize("key", [*records.ENDPOINT_OPTIONAL, "flow.tcp.flags.tags"])
def test_optional_keys_documented(key: str) -> None:
    assert _documented(key), key


@pytest.mark.parametrize("cls", [records.RawFlow, records.RawSocket, records.RawDns])
def test_raw_fields_documented(cls: type) -> None:
    section = DOC.split(f"### `{cls.SCHEMA}/1`")[1].split("###")[0]
    for f in dataclasses.fields(cls):
        assert f"`{f.name}`" in section, f"{cls.SCHEMA}.{f.name}"
