"""Settings: flags > environment > YAML file > default; one clear error per bad value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from flowscope.core import config
from flowscope.core.config import section, setting
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import NatsSettings
from flowscope.core.runtime import RuntimeSettings


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


@dataclass(frozen=True, slots=True)
class Inner:
    size: int = setting(2, "an even size", parse=_even)
    names: tuple[str, ...] = setting(("a",), "names")
    enabled: bool = setting(False, "a switch")


@dataclass(frozen=True, slots=True)
class Sample:
    runtime: RuntimeSettings = section(RuntimeSettings, flat=True)
    nats: NatsSettings = section(NatsSettings)
    inner: Inner = section(Inner)
    ratio: float = setting(0.5, "a ratio")
    label: str | None = setting(None, "optional label")


def test_defaults() -> None:
    s = config.load(Sample, {}, env={})
    assert s.inner == Inner()
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.runtime.log_format == "json"
    assert s.label is None


def test_names_of_flags_and_variables() -> None:
    by_name = {leaf.name: leaf for leaf in config.leaves(Sample)}
    assert by_name["nats.url"].env == "FLOWSCOPE_NATS_URL"
    assert by_name["nats.url"].flag == "--nats-url"
    assert by_name["log_format"].env == "FLOWSCOPE_LOG_FORMAT"
    assert by_name["inner.size"].flag == "--inner-size"


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("inner:\n  size: 4\n  names: [x, y]\nratio: 0.25\nlog_level: debug\n")
    env = {"FLOWSCOPE_CONFIG": str(f), "FLOWSCOPE_INNER_SIZE": "6"}
    s = config.load(Sample, {"ratio": "0.75"}, env=env)
    assert s.inner.size == 6  # env beats file
    assert s.inner.names == ("x", "y")  # file beats default
    assert s.ratio == 0.75  # flag beats file
    assert s.runtime.log_level == "debug"


def test_tuple_from_env_and_bool() -> None:
    env = {"FLOWSCOPE_INNER_NAMES": "a, b,,c", "FLOWSCOPE_INNER_ENABLED": "yes"}
    s = config.load(Sample, {}, env=env)
    assert s.inner.names == ("a", "b", "c")
    assert s.inner.enabled is True


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FLOWSCOPE_NATS_URL": "not-a-url"}, "FLOWSCOPE_NATS_URL"),
        ({"FLOWSCOPE_NATS_URL": "nats://host:99999"}, "FLOWSCOPE_NATS_URL"),
        ({"FLOWSCOPE_INNER_SIZE": "3"}, "FLOWSCOPE_INNER_SIZE"),
        ({"FLOWSCOPE_INNER_SIZE": "three"}, "FLOWSCOPE_INNER_SIZE"),
        ({"FLOWSCOPE_INNER_ENABLED": "maybe"}, "FLOWSCOPE_INNER_ENABLED"),
        ({"FLOWSCOPE_LOG_FORMAT": "xml"}, "FLOWSCOPE_LOG_FORMAT"),
        ({"FLOWSCOPE_DRAIN_TIMEOUT": "-1"}, "FLOWSCOPE_DRAIN_TIMEOUT"),
        ({"FLOWSCOPE_HTTP_ADDRESS": "nowhere"}, "FLOWSCOPE_HTTP_ADDRESS"),
        ({"FLOWSCOPE_NATS_TLS_CA": "/nonexistent/ca.pem"}, "FLOWSCOPE_NATS_TLS_CA"),
        # nan passes every comparison (nan <= 0 is False), inf every upper bound
        ({"FLOWSCOPE_DRAIN_TIMEOUT": "nan"}, "FLOWSCOPE_DRAIN_TIMEOUT"),
        ({"FLOWSCOPE_RATIO": "inf"}, "FLOWSCOPE_RATIO"),
        ({"FLOWSCOPE_RATIO": "-Infinity"}, "FLOWSCOPE_RATIO"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(Sample, {}, env=env)
    assert e.value.setting == names
    assert "\n" not in str(e.value)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--inner-size"):
        config.load(Sample, {"inner.size": "5"}, env={})


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(Sample, {"__config": str(tmp_path / "missing.yaml")}, env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(Sample, {"__config": str(bad)}, env={})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("inner:\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"inner\.colour"):
        config.load(Sample, {"__config": str(unknown)}, env={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(Sample, {"__config": str(scalar)}, env={})
    typed = tmp_path / "typed.yaml"
    typed.write_text("inner:\n  size: [1]\n")
    with pytest.raises(ConfigError, match=r"inner\.size"):
        config.load(Sample, {"__config": str(typed)}, env={})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('nats:\n  url: nats://h:4222\n  password: "Hunter2\n  user: alice\n', "line 3, column 13"),
        ("nats:\n  password: Hunter2\n  - x\n", "line 3, column 3"),
        ("nats:\n  password: Hunter2\n\tuser: alice\n", "line 3, column 1"),
        ("nats:\n  password: Hunter2\x00\n", "character 26"),
        (b"nats:\n  password: \xffHunter2\n", "byte 19"),
    ],
)
def test_a_yaml_error_is_one_line_without_the_file_s_text(
    tmp_path: Path, text: str | bytes, where: str
) -> None:
    """PyYAML's message quotes the lines around the error: a secret in the file (the
    NATS password) would reach the logs; the error says what and where, no more. A file
    that is not UTF-8 is one such line too, not a traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as e:
        config.load(Sample, {"__config": str(bad)}, env={})
    message = str(e.value)
    assert "Hunter2" not in message and "\n" not in message
    assert str(bad) in message and where in message


def test_describe_lists_every_setting() -> None:
    rows = config.describe(Sample)
    assert ("--inner-names", "FLOWSCOPE_INNER_NAMES", "a", "names") in rows
    assert len(rows) == len(list(config.leaves(Sample)))


def test_non_finite_numbers_in_a_file_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("ratio: .nan\n")
    with pytest.raises(ConfigError, match="not a finite number"):
        config.load(Sample, {}, env={"FLOWSCOPE_CONFIG": str(f)})


@pytest.mark.parametrize(
    ("argv", "enabled"),
    [([], False), (["--inner-enabled"], True), (["--inner-enabled", "false"], False),
     (["--inner-enabled", "yes"], True), (["--inner-enabled", "--ratio", "0.1"], True)],
)  # fmt: skip
def test_a_yes_no_flag_alone_means_yes(argv: list[str], enabled: bool) -> None:
    """As hubble's ``-f``: the flag without a value turns the setting on."""
    parser = config.OneLineParser()
    config.add_arguments(parser, Sample)
    s = config.load(Sample, vars(parser.parse_args(argv)), env={})
    assert s.inner.enabled is enabled


def test_only_yes_no_flags_stand_alone() -> None:
    parser = config.OneLineParser()
    config.add_arguments(parser, Sample)
    with pytest.raises(ConfigError, match="--label"):
        parser.parse_args(["--label"])
