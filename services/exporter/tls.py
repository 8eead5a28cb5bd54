"""TLS client contexts of the remote sinks: the shared core's (:mod:`flowscope.core.tls`),
which NATS uses too."""

from __future__ import annotations

from flowscope.core.tls import TlsFile, client_context, setting_name

__all__ = ["TlsFile", "client_context", "setting_name"]
