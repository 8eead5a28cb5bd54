"""Settings: dataclasses whose fields document themselves, loaded at the edge.

Every leaf field of a settings dataclass is one setting. Its value comes from, in order
of precedence: a command-line flag (``--nats-url``), a ``FLOWSCOPE_*`` environment
variable (``FLOWSCOPE_NATS_URL``), the YAML file given by ``--config`` /
``FLOWSCOPE_CONFIG`` (``nats: {url: ...}``), or the field's default. Nested dataclasses
are sections; a section declared with ``section(..., flat=True)`` adds its fields
without a prefix (the runtime settings every service shares). A secret (a password, a
token) has no flag: any user sees a process's command line (``ps``), so credentials
come only from the environment or from files.

A bad value raises :class:`~flowscope.core.errors.ConfigError` naming the setting as the
user wrote it (flag, variable or file key); the CLI turns that into one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from flowscope.core.errors import ConfigError

ENV_PREFIX = "FLOWSCOPE_"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")


def setting(
    default: Any,
    doc: str,
    *,
    parse: Callable[[Any], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    short: str | None = None,
) -> Any:
    """Declare a setting: its default, a doc (unit, and why this default) and a parser.

    ``parse`` receives the raw value (a string from flags/environment, or whatever YAML
    produced) after the type conversion and raises ``ValueError`` with a short reason.
    ``short`` is an optional one-letter flag alias (``-o``) for interactive commands.
    ``secret``: a credential, never a flag (see :func:`add_arguments`).
    """
    meta = {"doc": doc, "parse": parse, "choices": choices, "secret": secret, "short": short}
    return field(default=default, metadata=meta)


def section(cls: type[Any], doc: str = "", *, flat: bool = False) -> Any:
    """Declare a nested settings section (``flat``: its fields carry no prefix)."""
    return field(default_factory=cls, metadata={"doc": doc, "section": True, "flat": flat})


@dataclass(frozen=True, slots=True)
class Leaf:
    """One setting as the loader sees it."""

    path: tuple[str, ...]  # attribute path from the root settings object
    name: str  # dotted name, e.g. "nats.url"
    hint: Any
    default: Any
    doc: str
    parse: Callable[[Any], Any] | None
    choices: tuple[str, ...] | None
    secret: bool
    short: str | None = None

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def env(self) -> str:
        return env_name(self.name)


def variables(cls: type[Any]) -> frozenset[str]:
    """The environment variables :func:`load` reads for a settings class: one per
    setting, and ``FLOWSCOPE_CONFIG``."""
    return frozenset({ENV_PREFIX + "CONFIG", *(leaf.env for leaf in leaves(cls))})


def flag_name(dotted: str) -> str:
    """The command-line flag of a setting by its dotted name: ``--nats-url``."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


def env_name(dotted: str) -> str:
    """The environment variable of a setting by its dotted name: ``FLOWSCOPE_NATS_URL``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def leaves(
    cls: type[Any], path: tuple[str, ...] = (), name: tuple[str, ...] = ()
) -> Iterator[Leaf]:
    """Every setting of a settings class, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            sub_name = name if f.metadata.get("flat") else (*name, f.name)
            yield from leaves(hints[f.name], (*path, f.name), sub_name)
            continue
        yield Leaf(
            path=(*path, f.name),
            name=".".join((*name, f.name)),
            hint=hints[f.name],
            default=f.default,
            doc=f.metadata.get("doc", ""),
            parse=f.metadata.get("parse"),
            choices=f.metadata.get("choices"),
            secret=f.metadata.get("secret", False),
            short=f.metadata.get("short"),
        )


# ---------------------------------------------------------------- common checks
# Parsers shared by every service's settings (``setting(..., parse=positive)``).


def positive(value: float) -> float:
    """A number greater than 0 (timeouts, intervals)."""
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def not_negative(value: float) -> float:
    """A number of 0 or more."""
    if value < 0:
        raise ValueError("must not be negative")
    return value


def at_least_one(value: int) -> int:
    """A count of 1 or more (sizes, batch limits)."""
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def readable_file(value: str) -> str:
    """A path naming a file this process can read (or empty: not used).

    Opening it (rather than checking that it exists) also catches permissions, so a CA
    bundle or key the service cannot read stops start-up instead of the first connect.
    """
    if not value:
        return value
    try:
        with Path(value).open("rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {value}: {e.strerror}") from e
    return value


def parse_secret(value: str) -> str:
    """A credential without surrounding whitespace (the final newline a Secret made with
    ``kubectl create secret --from-file`` holds), and no control character left inside:
    such a value cannot be sent in a header, or is not the credential. Never shown."""
    secret = value.strip()
    if CONTROL.search(secret):
        raise ValueError(
            "the value has a control character (a line break, a tab, ...) inside it; "
            "only surrounding whitespace is removed"
        )
    return secret


# ---------------------------------------------------------------- conversion


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for a setting typed ``X | None``; ``(hint, False)`` otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner, True
    return hint, False


def _convert(hint: Any, value: Any) -> Any:
    hint, optional = _unwrap_optional(hint)
    if optional and (value is None or value == ""):
        return None
    origin = typing.get_origin(hint)
    if isinstance(value, (dict, list)) and origin is not tuple:
        raise ValueError("expected one value, not a list or a mapping")
    if hint is bool:
        return _bool(value)
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        if str(value).strip().lower().lstrip("+-") in (".nan", ".inf"):  # YAML's spellings
            raise ValueError(f"{value!r} is not a finite number")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{value!r} is not {'an integer' if hint is int else 'a number'}"
            ) from None
        if hint is float and not math.isfinite(number):  # nan and inf pass every bound check
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if hint is str:
        return str(value)
    if hint is Path:
        return Path(str(value))
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        if any(isinstance(item, (dict, list)) for item in items):
            raise ValueError("expected a list of values, not of lists or mappings")
        texts = [str(i).strip() for i in items if str(i).strip()]
        if typing.get_args(hint)[0] is int:
            return tuple(_convert(int, text) for text in texts)
        return tuple(texts)
    raise TypeError(f"unsupported setting type {hint}")  # a bug in a settings class


def _parse_leaf(leaf: Leaf, value: Any, source: str) -> Any:
    try:
        converted = _convert(leaf.hint, value)
        if leaf.choices is not None and converted not in leaf.choices:
            raise ValueError(f"{converted!r} is not one of {', '.join(leaf.choices)}")
        return leaf.parse(converted) if leaf.parse is not None else converted
    except ValueError as e:
        raise ConfigError(source, str(e)) from e


# ---------------------------------------------------------------- argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a :class:`ConfigError` (one line, exit 2)."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("command line", message)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per setting of ``cls`` (and ``--config``) to ``parser``.

    A secret gets no usable flag: its flag is hidden and refuses the value with one
    line naming where the secret belongs (see :class:`_SecretFlag`).
    """
    parser.add_argument(
        "--config",
        dest="__config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"YAML settings file (env {ENV_PREFIX}CONFIG)",
    )
    all_leaves = list(leaves(cls))
    names = {leaf.name for leaf in all_leaves}
    for leaf in all_leaves:
        if leaf.secret:
            parser.add_argument(
                leaf.flag,
                action=_SecretFlag,
                help=argparse.SUPPRESS,
                where=_secret_sources(leaf, names),
            )
            continue
        default = "(unset)" if leaf.default in (None, "", ()) else leaf.default
        if isinstance(leaf.default, tuple) and leaf.default:
            default = ",".join(map(str, leaf.default))
        flags = (leaf.flag,) if leaf.short is None else (leaf.short, leaf.flag)
        # A yes/no setting's flag alone means yes (``observe -f``, as hubble's); a value
        # after it is still read (``--follow false``). No command takes positionals.
        alone: dict[str, Any] = {"nargs": "?", "const": "true"} if _is_bool(leaf.hint) else {}
        parser.add_argument(
            *flags,
            dest=leaf.name,
            default=argparse.SUPPRESS,
            metavar=leaf.name.rsplit(".", 1)[-1].upper(),
            help=f"{leaf.doc} [env {leaf.env}; default {default}]",
            **alone,
        )


def _is_bool(hint: Any) -> bool:
    """Whether a setting's type is ``bool`` or ``bool | None``."""
    return _unwrap_optional(hint)[0] is bool


def _secret_sources(leaf: Leaf, names: set[str]) -> str:
    """Where a secret may come from: its variable, and its ``*_file`` setting if any."""
    sources = [leaf.env]
    if f"{leaf.name}_file" in names:
        sources.append(f"{env_name(leaf.name + '_file')} / {flag_name(leaf.name + '_file')}")
    return " or ".join(sources)


class _SecretFlag(argparse.Action):
    """The flag a secret would have had: refused without repeating the value.

    Left out of the parser, argparse's "unrecognized arguments" error would print the
    secret back; and a prefix of another flag would silently match.
    """

    def __init__(self, option_strings: list[str], dest: str, where: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, **kwargs)
        self.where = where

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        raise ConfigError(
            self.option_strings[0],
            f"a secret is not taken from the command line (any user sees it in ps); "
            f"set {self.where}",
        )


class _TextLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with every scalar read as the text written.

    YAML 1.1 would turn a password ``012345`` into 5349, ``yes`` into True, ``12:30:00``
    into 45000 and an empty value into None, and give ``1.5`` to a whole-number setting:
    as text, a value in the file is converted exactly as the same text in its
    environment variable (a null, ``~`` or nothing, as the variable set empty). A key given twice in one mapping is refused: PyYAML keeps the
    last, so a second ``nats:`` section would silently drop the first.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge" or not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"found key {key.value!r} twice", problem_mark=key.start_mark
                )
            seen.add(key.value)
        return super().construct_mapping(node, deep)


def _text(loader: _TextLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


def _empty(loader: _TextLoader, node: yaml.ScalarNode) -> str:
    """YAML's null (``null``, ``~``, nothing): as an empty variable, not the text
    ``null`` (which a string setting would take as its value)."""
    return ""


for _tag in ("bool", "int", "float", "timestamp"):
    _TextLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _text)
_TextLoader.add_constructor("tag:yaml.org,2002:null", _empty)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=_TextLoader)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError("--config", f"{path} is not UTF-8 text (byte {e.start + 1})") from e
    except yaml.YAMLError as e:
        raise ConfigError("--config", f"{path} is not valid YAML: {_yaml_problem(e)}") from e
    except RecursionError as e:  # PyYAML composes nested lists and mappings recursively
        raise ConfigError("--config", f"{path} nests lists or mappings too deeply") from e
    if data in (None, ""):
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of settings")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, in one line. Not PyYAML's own message: that
    quotes the lines around the error, and the file may hold a secret (the NATS
    password) while a start-up error goes to the logs."""
    if isinstance(error, yaml.reader.ReaderError):
        return f"{error.reason} (character {error.position + 1})"
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if not problem or mark is None:
        return "a syntax error"
    where = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and start is not None:
        where += f" ({context} at line {start.line + 1}, column {start.column + 1})"
    return where


def _flatten(
    data: Mapping[Any, Any],
    where: str,
    known: frozenset[str],
    prefix: str = "",
    written: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The file's settings by dotted name. Each key is checked on the way down, so that
    aliases (a mapping holding itself, a "billion laughs" of mappings) stop at the first
    key that names no setting or section instead of being expanded without end.

    ``written`` maps each dotted name found so far to its keys as the file writes them
    (``nats: tls-ca``). ``tls-ca`` and ``tls_ca``, or ``nats.url`` beside
    ``nats: {url: ...}``, name one setting, and the later silently won: a setting
    reached twice is refused, as a key given twice is."""
    written = {} if written is None else written
    out: dict[str, Any] = {}
    for key, value in data.items():
        spelt = f"{written.get(prefix, '')}{key}"
        name = f"{prefix}{key}".replace("-", "_")
        if name in known:
            _once(name, spelt, written, where)
            out[name] = value
        elif not any(setting.startswith(name + ".") for setting in known):
            raise ConfigError(f"{where}: {name}", "unknown setting")
        elif isinstance(value, dict):
            written[name + "."] = spelt + ": "
            out.update(_flatten(value, where, known, name + ".", written))
        elif value != "":  # empty: a section whose every setting is commented out
            raise ConfigError(f"{where}: {name}", "a section, expected a mapping of settings")
    return out


def _once(name: str, spelt: str, written: dict[str, str], where: str) -> None:
    """Remember how the file writes setting ``name``; refuse it written a second time."""
    if name in written:
        raise ConfigError(f"{where}: {name}", f"given twice, as {written[name]} and as {spelt}")
    written[name] = spelt


def load(
    cls: type[T], args: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> T:
    """Build a settings object of ``cls`` from parsed flags, environment and YAML."""
    args = dict(args or {})
    env = os.environ if env is None else env
    config_path = args.pop("__config", None) or env.get(ENV_PREFIX + "CONFIG")
    all_leaves = list(leaves(cls))
    known = frozenset(leaf.name for leaf in all_leaves)
    from_file = _flatten(_read_yaml(config_path), config_path, known) if config_path else {}
    values: dict[tuple[str, ...], Any] = {}
    for leaf in all_leaves:
        if leaf.name in args and args[leaf.name] is not None:
            values[leaf.path] = _parse_leaf(leaf, args[leaf.name], leaf.flag)
        elif leaf.env in env:
            values[leaf.path] = _parse_leaf(leaf, env[leaf.env], leaf.env)
        elif leaf.name in from_file:
            values[leaf.path] = _parse_leaf(
                leaf, from_file[leaf.name], f"{config_path}: {leaf.name}"
            )
        elif leaf.parse is not None and leaf.default not in (None, "", ()):
            values[leaf.path] = _parse_leaf(leaf, leaf.default, leaf.flag)
    return _build(cls, values, ())


def _build(cls: type[T], values: Mapping[tuple[str, ...], Any], path: tuple[str, ...]) -> T:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        p = (*path, f.name)
        if f.metadata.get("section"):
            kwargs[f.name] = _build(hints[f.name], values, p)
        elif p in values:
            kwargs[f.name] = values[p]
    return cls(**kwargs)


def describe(cls: type[Any]) -> list[tuple[str, str, str, str]]:
    """(flag, environment variable, default, doc) for every setting: the reference table.

    A secret has no flag: its flag column says so."""
    rows = []
    for leaf in leaves(cls):
        default = "" if leaf.default in (None, ()) else str(leaf.default)
        if isinstance(leaf.default, tuple):
            default = ",".join(map(str, leaf.default))
        flag = "(no flag: secret)" if leaf.secret else leaf.flag
        rows.append((flag, leaf.env, default, leaf.doc))
    return rows


def without_secrets(urls: str) -> str:
    """URL(s), comma-separated, for logs and error lines: any ``user:password@`` or
    ``token@`` part left out. Every place that shows a configured URL uses this."""
    return ",".join(without_userinfo(url) for url in urls.split(","))


def without_userinfo(url: str, mark: str = "") -> str:
    """One URL with its ``user:password@`` (or ``token@``) part replaced by ``mark``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = _userinfo_end(rest)
    return f"{scheme}{sep}{mark}{rest[at + 1 :]}" if at >= 0 else url


def _userinfo_end(rest: str) -> int:
    """Where the ``@`` ending the user information is in ``rest`` (the URL after its
    scheme), or -1. The authority ends at the first ``/`` (an ``@`` in the path is not
    credentials), unless what comes before it is no ``host[:port]``: a password is not
    always percent-encoded (base64 holds ``/``), and ``user:Zm9v/YmFy@host`` showed it."""
    netloc = rest.partition("/")[0]
    if "@" in netloc:
        return netloc.rindex("@")
    _, colon, port = netloc.rpartition(":")
    if not colon or port.isdigit() or netloc.endswith("]"):
        return -1
    return rest.rfind("@")
