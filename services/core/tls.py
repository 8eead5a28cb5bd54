"""TLS client contexts, built (and so checked) at start-up: NATS and the remote sinks.

A CA bundle, client certificate or key that is readable but not PEM, a key without its
certificate (or the reverse), a key that does not belong to its certificate, or an
encrypted key is bad configuration: a :class:`ConfigError` naming the setting and the
file (one line, exit 2), before any connection. Loaded lazily, the same file raised
``ssl.SSLError`` at the first connection instead, which was retried for ever.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from flowscope.core.config import env_name, flag_name
from flowscope.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsFile:
    """A configured PEM file (empty path: not set) and the setting it came from."""

    path: str
    setting: str  # as the user names it: "FLOWSCOPE_OTLP_CA_FILE / --otlp-ca-file"


def setting_name(section: str, name: str, *, flag: bool = True) -> str:
    """How a user names a flowscope setting: its variable and its flag (a secret has no
    flag: ``flag=False``)."""
    dotted = f"{section}.{name}"
    return f"{env_name(dotted)} / {flag_name(dotted)}" if flag else env_name(dotted)


def client_context(ca: TlsFile, cert: TlsFile, key: TlsFile) -> ssl.SSLContext:
    """A client context verifying the server with ``ca`` (else the system roots),
    presenting ``cert`` and ``key`` (both or neither) for mutual TLS."""
    if bool(cert.path) != bool(key.path):
        given, missing = (cert, key) if cert.path else (key, cert)
        raise ConfigError(missing.setting, f"mutual TLS needs it with {given.setting}")
    try:
        context = ssl.create_default_context(cafile=ca.path or None)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(ca.setting, f"{ca.path} holds no PEM certificate ({_why(e)})") from e
    if cert.path:
        _check_certificate(cert)
        try:
            # A callback, so that an encrypted key fails here instead of prompting.
            context.load_cert_chain(cert.path, key.path, password=lambda: b"")
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(
                key.setting,
                f"{key.path} is not an unencrypted PEM private key of {cert.path} ({_why(e)})",
            ) from e
    return context


def _check_certificate(cert: TlsFile) -> None:
    """``load_cert_chain`` does not say which of its two files is wrong: try the
    certificate alone, so the error names the right setting."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert.path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(cert.setting, f"{cert.path} holds no PEM certificate ({_why(e)})") from e


def _why(e: Exception) -> str:
    return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e)
