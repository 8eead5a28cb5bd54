"""One setting written two ways in the settings file: refused, as a key given twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.config import section, setting
from flowscope.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Tls:
    tls_ca: str = setting("", "a CA bundle")
    tls_server_name: str = setting("", "a name")


@dataclass(frozen=True, slots=True)
class Sample:
    nats: Tls = section(Tls)
    other_side: Tls = section(Tls)


def _load(tmp_path: Path, text: str) -> Sample:
    f = tmp_path / "settings.yaml"
    f.write_text(text)
    return config.load(Sample, {"__config": str(f)}, env={})


@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        ("nats:\n  tls-ca: a.pem\n  tls_ca: b.pem\n", "nats: tls-ca", "nats: tls_ca"),
        ("nats:\n  tls_ca: a.pem\nnats.tls-ca: b.pem\n", "nats: tls_ca", "nats.tls-ca"),
        ("nats:\n  tls_ca: a.pem\nnats.tls_ca: b.pem\n", "nats: tls_ca", "nats.tls_ca"),
        (
            "other_side:\n  tls_ca: a.pem\nother-side:\n  tls_ca: b.pem\n",
            "other_side: tls_ca",
            "other-side: tls_ca",
        ),
    ],
    ids=["hyphen-and-underscore", "dotted-and-nested", "dotted-and-nested-alike", "two-sections"],
)
def test_two_spellings_of_one_setting_are_refused_naming_both(
    tmp_path: Path, text: str, first: str, second: str
) -> None:
    """Which of the two won was silent (the last, by the file's order)."""
    with pytest.raises(ConfigError, match=f"given twice, as {first} and as {second}"):
        _load(tmp_path, text)


def test_two_section_spellings_with_different_settings_both_apply(tmp_path: Path) -> None:
    s = _load(tmp_path, "other_side:\n  tls_ca: a.pem\nother-side:\n  tls-server-name: h\n")
    assert (s.other_side.tls_ca, s.other_side.tls_server_name) == ("a.pem", "h")


def test_one_spelling_of_each_setting_loads(tmp_path: Path) -> None:
    s = _load(tmp_path, "nats:\n  tls-ca: a.pem\n  tls_server_name: h\n")
    assert (s.nats.tls_ca, s.nats.tls_server_name) == ("a.pem", "h")


def test_a_merged_key_overridden_in_the_same_spelling_still_loads(tmp_path: Path) -> None:
    s = _load(tmp_path, "nats: &n\n  tls_ca: a.pem\nother_side:\n  <<: *n\n  tls_ca: b.pem\n")
    assert (s.nats.tls_ca, s.other_side.tls_ca) == ("a.pem", "b.pem")
