"""Credentials stay out of command lines, logs and error lines.

A secret setting has no flag (any user reads a process's command line in ``ps``): its
flag is refused with one line naming where the secret belongs, without repeating it.
Every URL a service shows (the ``flowscope up`` ready line, observe's banner, NATS log
lines and errors) goes through ``without_secrets``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from flowscope import up
from flowscope.cli import COMMANDS, build_parser
from flowscope.core import config
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import nkey_seed_file, parse_urls

SECRET_FLAGS = {
    "--nats-password": "FLOWSCOPE_NATS_PASSWORD",
    "--nats-token": "FLOWSCOPE_NATS_TOKEN",
    "--otlp-headers": "FLOWSCOPE_OTLP_HEADERS",
    "--elasticsearch-password": "FLOWSCOPE_ELASTICSEARCH_PASSWORD_FILE",
    "--elasticsearch-api-key": "FLOWSCOPE_ELASTICSEARCH_API_KEY_FILE",
}


@pytest.mark.parametrize("flag", sorted(SECRET_FLAGS))
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_a_secret_flag_is_refused_naming_where_it_belongs(flag: str, form: str) -> None:
    argv = [flag, "Hunter2"] if form == "separate" else [f"{flag}=Hunter2"]
    with pytest.raises(ConfigError) as e:
        build_parser().parse_args(["exporter", *argv])
    assert e.value.setting == flag
    assert SECRET_FLAGS[flag] in e.value.problem
    assert "Hunter2" not in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_offers_a_flag_for_a_secret(command: str) -> None:
    settings = importlib.import_module(COMMANDS[command][0]).Settings
    parser = config.OneLineParser()
    config.add_arguments(parser, settings)
    help_text = parser.format_help()
    for flag in SECRET_FLAGS:
        assert f"{flag} " not in help_text
    for flag, _, _, _ in config.describe(settings):
        assert flag not in SECRET_FLAGS


def test_secrets_still_come_from_the_environment() -> None:
    from flowscope.exporter.settings import Settings

    ns = build_parser().parse_args(["exporter"])
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    env = {"FLOWSCOPE_NATS_PASSWORD": "pw", "FLOWSCOPE_ELASTICSEARCH_API_KEY": "key"}
    settings = config.load(Settings, args, env=env)
    assert (settings.nats.password, settings.elasticsearch.api_key) == ("pw", "key")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:S3cret@h:4222", "nats://h:4222"),
        ("nats://tok3n@h:4222,tls://u:p@w@h2:4222", "nats://h:4222,tls://h2:4222"),
        ("http://bob:pw@h:4318/v1/logs", "http://h:4318/v1/logs"),
        ("bob:pw@h:4317", "h:4317"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("http://h/a@b", "http://h/a@b"),  # an @ in the path is not credentials
    ],
)
def test_without_secrets(url: str, shown: str) -> None:
    assert config.without_secrets(url) == shown


def test_a_bad_nats_url_is_named_without_its_password() -> None:
    for url in ("nats://alice:S3cret@127.0.0.1:99999", "http://alice:S3cret@h:4222"):
        with pytest.raises(ValueError) as e:
            parse_urls(url)
        assert "S3cret" not in str(e.value)
        assert "127.0.0.1:99999" in str(e.value) or "h:4222" in str(e.value)


def test_up_ready_line_shows_no_credentials() -> None:
    line = up._summary(
        up.Pipeline("nats://alice:S3cret@127.0.0.1:4222"),
        {},
        [up.Sink("otlp", "http://bob:OtlpPW@127.0.0.1:4318"), up.Sink("stdout")],
    )
    assert "S3cret" not in line and "OtlpPW" not in line
    assert "nats nats://127.0.0.1:4222;" in line
    assert "sinks otlp=http://127.0.0.1:4318, stdout;" in line


def test_a_file_without_an_nkey_seed_is_refused_without_showing_it(tmp_path: Path) -> None:
    bad = tmp_path / "seed.nk"
    bad.write_text("SUnotaseedHunter2\n")
    with pytest.raises(ValueError) as e:
        nkey_seed_file(str(bad))
    assert str(bad) in str(e.value) and "Hunter2" not in str(e.value)
    assert nkey_seed_file("") == ""
