"""Settings of the exporter (flags, FLOWSCOPE_* variables, YAML): see docs/configuration.md."""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.core.config import section
from flowscope.core.messaging import NatsSettings
from flowscope.core.runtime import RuntimeSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the exporter can be told."""

    runtime: RuntimeSettings = section(RuntimeSettings, "logs, HTTP endpoint, drain", flat=True)
    nats: NatsSettings = section(NatsSettings, "NATS connection and streams")
