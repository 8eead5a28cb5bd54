"""Credentials stay out of command lines, logs and error lines.

A secret setting has no flag (any user reads a process's command line in ``ps``): its
flag is refused with one line naming where the secret belongs, without repeating it.
Every URL a service shows (the ``flowscope up`` ready line, observe's banner, NATS log
lines and errors) goes through ``without_secrets``.
"""

from __future__ import annotations

import base64
import importlib
from pathlib import Path
from typing import Any

import nkeys
import pytest
from flowscope import up
from flowscope.cli import COMMANDS, build_parser
from flowscope.core import config, messaging
from flowscope.core.errors import ConfigError
from flowscope.core.messaging import (
    NatsMetrics,
    NatsSettings,
    connect_options,
    creds_file,
    nkey_seed_file,
    parse_urls,
)
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry

from tests.support import nats_jwt

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


def test_each_connection_signs_with_the_nkey_seed_file_as_it_is_then(tmp_path: Path) -> None:
    """A rotated seed signs from the next (re)connection on, under its own public key
    (nats-py sent the public key it derived once, at connect)."""
    seed = tmp_path / "user.nk"
    for _ in range(2):
        user = nats_jwt.keypair(nkeys.PREFIX_BYTE_USER)
        seed.write_bytes(user.seed + b"\n")
        public, signature = messaging._seed_signature(str(seed), "nonce")
        assert public == user.public_key.decode()
        assert user.verify(b"nonce", base64.b64decode(signature))


@pytest.mark.parametrize("damage", ["garbage", "emptied", "removed", "a directory"])
def test_an_nkey_seed_file_made_malformed_fails_the_connection_naming_its_setting(
    tmp_path: Path, damage: str
) -> None:
    """Replaced under a running service, the file is checked at each connection: an
    nkeys error ended nats-py's reconnection loop silently. The attempt fails with a
    nats-py error, which that loop reports and carries on from, naming the setting and
    not what the file holds."""
    seed = tmp_path / "user.nk"
    if damage == "garbage":
        seed.write_text("SUnotaseedHunter2\n")
    elif damage == "emptied":
        seed.write_text("")
    elif damage == "a directory":
        seed.mkdir()
    with pytest.raises(NatsError) as e:
        messaging._seed_signature(str(seed), "nonce")
    message = str(e.value)
    assert "FLOWSCOPE_NATS_NKEY_SEED_FILE" in message and str(seed) in message
    assert "Hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "nats://alice:S3cret@127.0.0.1:4222",
        "nats://S3cret@127.0.0.1:4222",  # a token
        "nats://127.0.0.1:4222,tls://bob:S3cret@h2:4222",
    ],
)
def test_credentials_in_a_nats_url_are_refused_without_showing_them(url: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_urls(url)
    assert "S3cret" not in str(e.value) and "\n" not in str(e.value)
    assert "FLOWSCOPE_NATS_PASSWORD" in str(e.value) and "FLOWSCOPE_NATS_TOKEN" in str(e.value)


@pytest.mark.parametrize("command", ["exporter", "up"])
def test_a_password_in_the_nats_url_flag_is_refused(command: str) -> None:
    module = importlib.import_module(COMMANDS[command][0])
    ns = build_parser().parse_args([command, "--nats-url", "nats://alice:S3cret@h:4222"])
    args = {k: v for k, v in vars(ns).items() if k != "command"}
    with pytest.raises(ConfigError) as e:
        config.load(module.Settings, args, env={})
    assert e.value.setting == "--nats-url" and "S3cret" not in str(e.value)


def test_a_password_in_the_nats_url_variable_or_file_is_refused(tmp_path: Path) -> None:
    from flowscope.exporter.settings import Settings

    env = {"FLOWSCOPE_NATS_URL": "nats://alice:S3cret@h:4222"}
    with pytest.raises(ConfigError, match="FLOWSCOPE_NATS_URL"):
        config.load(Settings, {}, env=env)
    f = tmp_path / "s.yaml"
    f.write_text("nats:\n  url: nats://alice:S3cret@h:4222\n")
    with pytest.raises(ConfigError, match=r"nats\.url") as e:
        config.load(Settings, {"__config": str(f)}, env={})
    assert "S3cret" not in str(e.value)


@pytest.mark.parametrize("name", ["user", "password", "token"])
def test_nats_credentials_lose_surrounding_whitespace(name: str, tmp_path: Path) -> None:
    """A Secret made with ``kubectl create secret --from-file`` reaches the variable
    with its file's final newline; before, it was sent and NATS refused every component
    ("Authorization Violation")."""
    from flowscope.exporter.settings import Settings

    env = {f"FLOWSCOPE_NATS_{name.upper()}": " Hunter2\n"}
    assert getattr(config.load(Settings, {}, env=env).nats, name) == "Hunter2"
    f = tmp_path / "s.yaml"
    f.write_text(f"nats:\n  {name}: 'Hunter2\n\n'\n")
    assert getattr(config.load(Settings, {"__config": str(f)}, env={}).nats, name) == "Hunter2"


@pytest.mark.parametrize("name", ["user", "password", "token"])
@pytest.mark.parametrize("inside", ["\n", "\r\nPUB x 1", "\t", "\x00", "\x7f"])
def test_nats_credentials_with_a_control_character_inside_are_refused_unechoed(
    name: str, inside: str
) -> None:
    from flowscope.exporter.settings import Settings

    var = f"FLOWSCOPE_NATS_{name.upper()}"
    with pytest.raises(ConfigError) as e:
        config.load(Settings, {}, env={var: f"Hunter2{inside}more"})
    assert e.value.setting == var
    assert "Hunter2" not in str(e.value)


def _creds_parts() -> tuple[str, str]:
    """A well-formed creds file's text cut before its seed section: (JWT half, seed half)."""
    user = nats_jwt.keypair(nkeys.PREFIX_BYTE_USER)
    account = nats_jwt.keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_jwt = nats_jwt.encode(account, user.public_key.decode(), "u", {"type": "user"})
    text = nats_jwt.creds(user_jwt, user)
    jwt_half, mark, seed_half = text.partition("****")
    return jwt_half, mark + seed_half


def test_a_well_formed_creds_file_is_accepted(tmp_path: Path) -> None:
    jwt_half, seed_half = _creds_parts()
    good = tmp_path / "good.creds"
    good.write_text(jwt_half + seed_half)
    assert creds_file(str(good)) == str(good)
    assert creds_file("") == ""


@pytest.mark.parametrize(
    "case", ["seed half only", "JWT half only", "not a creds file", "empty JWT",
             "account seed", "seed line cut", "CRLF line ends"],
)  # fmt: skip
def test_a_malformed_creds_file_is_refused_without_showing_it(tmp_path: Path, case: str) -> None:
    """nats-py reads the file only as it connects: without a JWT section it loops for
    ever at the end of the file (full CPU, deaf to SIGTERM); without a seed it fails
    every attempt, retried for ever. Both are a start-up error naming the file."""
    jwt_half, seed_half = _creds_parts()
    account_seed = nats_jwt.keypair(nkeys.PREFIX_BYTE_ACCOUNT).seed.decode()
    user_seed = seed_half.split("-----\n")[1].split("\n")[0]
    text = {
        "seed half only": seed_half,
        "JWT half only": jwt_half,
        "not a creds file": "Hunter2\n",
        "empty JWT": "-----BEGIN NATS USER JWT-----\n\n" + seed_half,
        "account seed": jwt_half + seed_half.replace(user_seed, account_seed),
        "seed line cut": jwt_half + seed_half.split(user_seed)[0] + user_seed,
        "CRLF line ends": (jwt_half + seed_half).replace("\n", "\r\n"),
    }[case]
    bad = tmp_path / "bad.creds"
    bad.write_text(text)
    with pytest.raises(ValueError) as e:
        creds_file(str(bad))
    message = str(e.value)
    assert str(bad) in message and "\n" not in message
    for secret in ("Hunter2", user_seed, account_seed, jwt_half.split("\n")[1]):
        assert secret not in message


def test_a_malformed_creds_file_names_its_setting(tmp_path: Path) -> None:
    from flowscope.exporter.settings import Settings

    bad = tmp_path / "bad.creds"
    bad.write_text(_creds_parts()[1])
    with pytest.raises(ConfigError) as e:
        config.load(Settings, {}, env={"FLOWSCOPE_NATS_CREDS_FILE": str(bad)})
    assert e.value.setting == "FLOWSCOPE_NATS_CREDS_FILE"


def _connection_credentials(path: Path) -> Any:
    """What a connection (first or reconnection) sends for a creds file: the nonce
    signature and the JWT, as nats-py asks its callbacks for them."""
    settings = NatsSettings(creds_file=str(path))
    opts = connect_options(settings, "test", NatsMetrics.create(CollectorRegistry()))
    assert "user_credentials" not in opts  # nats-py would read the file unchecked
    return opts["signature_cb"]("nonce"), opts["user_jwt_cb"]()


def test_each_connection_reads_the_creds_file_anew(tmp_path: Path) -> None:
    """A rotated creds file is used from the next (re)connection on."""
    creds = tmp_path / "user.creds"
    for _ in range(2):
        user = nats_jwt.keypair(nkeys.PREFIX_BYTE_USER)
        account = nats_jwt.keypair(nkeys.PREFIX_BYTE_ACCOUNT)
        user_jwt = nats_jwt.encode(account, user.public_key.decode(), "u", {"type": "user"})
        creds.write_text(nats_jwt.creds(user_jwt, user))
        signature, jwt = _connection_credentials(creds)
        assert bytes(jwt) == user_jwt.encode()
        assert user.verify(b"nonce", base64.b64decode(signature))


@pytest.mark.parametrize("case", ["seed half only", "JWT half only", "not a creds file"])
def test_a_creds_file_made_malformed_fails_the_connection_naming_its_setting(
    tmp_path: Path, case: str
) -> None:
    """Replaced under a running service (a bad rotation), the file is checked again at
    each connection: nats-py looped for ever on a file without a JWT (full CPU, deaf to
    SIGTERM). The attempt fails with a nats-py error, which its reconnection loop
    reports and carries on from, naming the setting and not what the file holds."""
    jwt_half, seed_half = _creds_parts()
    text = {"seed half only": seed_half, "JWT half only": jwt_half, "not a creds file": "Hunter2\n"}
    creds = tmp_path / "user.creds"
    creds.write_text(text[case])
    with pytest.raises(NatsError) as e:
        _connection_credentials(creds)
    message = str(e.value)
    assert "FLOWSCOPE_NATS_CREDS_FILE" in message and "\n" not in message
    user_seed = seed_half.split("-----\n")[1].split("\n")[0]
    for secret in ("Hunter2", user_seed, jwt_half.split("\n")[1]):
        assert secret not in message
