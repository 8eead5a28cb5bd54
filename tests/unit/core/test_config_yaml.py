"""The YAML settings file: values read as the text written, odd shapes one clear error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.config import section, setting
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import NatsSettings


@dataclass(frozen=True, slots=True)
class Limits:
    count: int = setting(10, "a whole number")
    seconds: float = setting(1.0, "a number")
    label: str = setting("x", "a text")


@dataclass(frozen=True, slots=True)
class Sample:
    nats: NatsSettings = section(NatsSettings)
    limits: Limits = section(Limits)
    other: Limits = section(Limits)


def _load(tmp_path: Path, text: str) -> Sample:
    f = tmp_path / "settings.yaml"
    f.write_text(text)
    return config.load(Sample, {"__config": str(f)}, env={})


@pytest.mark.parametrize(
    ("text", "name", "value"),
    [
        ("nats:\n  user:\n", "user", ""),  # YAML 1.1: None, which became "None"
        ("nats:\n  password: 012345\n", "password", "012345"),  # octal: 5349
        ("nats:\n  token: yes\n", "token", "yes"),  # a boolean: "True"
        ("nats:\n  token: 12:30:00\n", "token", "12:30:00"),  # sexagesimal: 45000
        ("nats:\n  token: 1.10\n", "token", "1.10"),  # a float: "1.1"
    ],
)
def test_a_value_in_the_file_is_the_text_written(
    tmp_path: Path, text: str, name: str, value: str
) -> None:
    assert getattr(_load(tmp_path, text).nats, name) == value


def test_numbers_and_yes_no_from_the_file_convert_as_from_the_environment(
    tmp_path: Path,
) -> None:
    s = _load(tmp_path, "nats:\n  tls_handshake_first: on\nlimits:\n  count: 7\n  seconds: 2\n")
    assert s.nats.tls_handshake_first is True
    assert (s.limits.count, s.limits.seconds) == (7, 2.0)


@pytest.mark.parametrize("value", ["1.5", "9" * 5000], ids=["fraction", "over-4300-digits"])
def test_a_whole_number_setting_refuses_what_its_variable_refuses(
    tmp_path: Path, value: str
) -> None:
    """A fraction was cut to a whole number; a number of over 4300 digits a traceback."""
    with pytest.raises(ConfigError, match=r"limits\.count: .* is not an integer"):
        _load(tmp_path, f"limits:\n  count: {value}\n")
    with pytest.raises(ConfigError, match="FLOWSCOPE_LIMITS_COUNT"):
        config.load(Sample, {}, env={"FLOWSCOPE_LIMITS_COUNT": value})


def test_a_long_whole_number_is_a_number_from_either_source(tmp_path: Path) -> None:
    """Checked as a float would be (math.isfinite), it was an OverflowError traceback."""
    assert _load(tmp_path, "limits:\n  count: " + "9" * 400 + "\n").limits.count == 10**400 - 1
    assert config.load(Sample, {}, env={"FLOWSCOPE_LIMITS_COUNT": "9" * 400}).limits.count > 0


def test_a_number_too_large_for_a_float_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limits\.seconds: .* not a finite number"):
        _load(tmp_path, "limits:\n  seconds: " + "9" * 400 + "\n")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("nats: &n\n  extra: *n\n", r"nats\.extra: unknown setting"),
        ("nats: &n\n  url: *n\n", r"nats\.url: expected one value"),
        ("limits: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings too deeply"),
    ],
    ids=["mapping-holding-itself", "setting-holding-its-section", "deep-nesting"],
)
def test_aliases_and_nesting_are_one_error_not_a_recursion(
    tmp_path: Path, text: str, where: str
) -> None:
    with pytest.raises(ConfigError, match=where):
        _load(tmp_path, text)


def test_a_key_given_twice_is_refused_not_the_first_dropped(tmp_path: Path) -> None:
    """PyYAML keeps the last: the first nats section was silently lost."""
    text = "nats:\n  url: nats://a:4222\nlimits:\n  count: 3\nnats:\n  user: u\n"
    with pytest.raises(ConfigError, match="found key 'nats' twice at line 5, column 1"):
        _load(tmp_path, text)


def test_a_merge_key_shares_settings_and_a_key_beside_it_wins(tmp_path: Path) -> None:
    """A key beside ``<<`` overrides the merged one: not a key given twice."""
    s = _load(tmp_path, "limits: &l\n  count: 3\n  label: a\nother:\n  <<: *l\n  count: 4\n")
    assert (s.limits.count, s.other.count, s.other.label) == (3, 4, "a")


def test_a_section_with_every_setting_commented_out_is_empty(tmp_path: Path) -> None:
    s = _load(tmp_path, "nats:\n#  url: nats://a:4222\nlimits:\n  count: 3\n")
    assert s.nats.url == NatsSettings().url and s.limits.count == 3


def test_a_section_given_one_value_is_named_as_a_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nats: a section, expected a mapping"):
        _load(tmp_path, "nats: nats://a:4222\n")


@pytest.mark.parametrize("text", ["", "---\n", "# nothing yet\n"])
def test_an_empty_file_sets_nothing(tmp_path: Path, text: str) -> None:
    assert _load(tmp_path, text) == Sample()


@pytest.mark.parametrize("written", ["null", "~", "NULL", ""])
def test_a_null_is_the_variable_set_empty_not_the_text_null(tmp_path: Path, written: str) -> None:
    assert _load(tmp_path, f"nats:\n  user: {written}\n").nats.user == ""
