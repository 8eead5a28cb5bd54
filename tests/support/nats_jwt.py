"""NATS decentralised auth for tests: operator, account and user NKeys and JWTs.

What ``nsc`` would make, built with the ``nkeys`` library: an operator that signs an
account (JetStream enabled), the account signing a user, the user's ``.creds`` file,
and a nats-server configuration in operator mode with a memory resolver preloaded with
the account. The JWTs follow the NATS JWT v2 format: header ``{"typ":"JWT",
"alg":"ed25519-nkey"}``, base64url (unpadded) JSON claims, an Ed25519 signature by the
issuer over ``header.claims``, and ``jti`` = base32 SHA-512/256 of the claims without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def keypair(prefix: int) -> nkeys.KeyPair:
    """A fresh NKey of one kind (``nkeys.PREFIX_BYTE_OPERATOR``, ``_ACCOUNT``, ``_USER``)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A JWT for ``subject`` with ``nats`` claims, signed by ``issuer``."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    digest = hashlib.new("sha512_256", _json(claims)).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signed = f"{_b64(_json(_HEADER))}.{_b64(_json(claims))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def creds(user_jwt: str, user: nkeys.KeyPair) -> str:
    """A ``.creds`` file's text, as ``nsc generate creds`` writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )


@dataclass
class Trust:
    """One operator → account → user chain, written to ``directory``."""

    server_config: Path  # nats-server -c
    creds_file: Path  # a user of the trusted account
    account: nkeys.KeyPair
    operator: nkeys.KeyPair

    def user_creds(self, path: Path, signer: nkeys.KeyPair) -> Path:
        """Another user's creds file, signed by ``signer`` (an untrusted account fails)."""
        user = keypair(nkeys.PREFIX_BYTE_USER)
        jwt = encode(signer, user.public_key.decode(), "other", user_claims())
        path.write_text(creds(jwt, user))
        return path


def user_claims() -> dict[str, Any]:
    return {"pub": {}, "sub": {}, **UNLIMITED, "type": "user", "version": 2}


def trust(directory: Path) -> Trust:
    """Keys, JWTs, a creds file and an operator-mode server configuration."""
    operator = keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = encode(
        operator, operator.public_key.decode(), "flowscope-test", {"type": "operator", "version": 2}
    )
    limits = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1, **JETSTREAM}  # fmt: skip
    account_jwt = encode(
        operator,
        account.public_key.decode(),
        "FLOWSCOPE",
        {"limits": limits, "type": "account", "version": 2},
    )
    # JetStream needs a system account for its internal subscriptions.
    system = keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system_jwt = encode(
        operator,
        system.public_key.decode(),
        "SYS",
        {"limits": UNLIMITED, "type": "account", "version": 2},
    )
    user_jwt = encode(account, user.public_key.decode(), "collector", user_claims())
    creds_file = directory / "collector.creds"
    creds_file.write_text(creds(user_jwt, user))
    creds_file.chmod(0o600)
    config = directory / "server.conf"
    config.write_text(
        f"operator: {operator_jwt}\n"
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {account.public_key.decode()}: {account_jwt}\n"
        f"  {system.public_key.decode()}: {system_jwt}\n"
        "}\n"
    )
    return Trust(config, creds_file, account, operator)
