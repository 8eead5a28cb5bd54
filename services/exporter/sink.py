"""The seam between consuming and delivering: what every sink implements.

A sink receives a batch of records of one kind (flow or DNS, decoded wire dicts) and
answers, per record, whether the backend confirmed it. The consumer acks a message only
when every record in it is confirmed or dead-lettered; anything ``deferred`` (the backend
could not be reached before the sink was told to shut down) is redelivered later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

Record = dict[str, Any]


class Kind(Enum):
    """Which record schema a batch holds; each stream carries exactly one."""

    FLOW = "flow"
    DNS = "dns"


@dataclass(slots=True)
class ExportResult:
    """What became of a batch: indices not listed here were delivered.

    ``rejected`` maps a record's index to why the backend refused it for good (it goes to
    the dead-letter subject); ``deferred`` lists records not delivered yet (redeliver).
    ``unconfirmed`` counts delivered records the backend did not store anew, without
    naming which: Elasticsearch already held them (409), or an OTLP ``partial_success``
    dropped them. They are acked like the others but not counted as exported.
    """

    rejected: dict[int, str] = field(default_factory=dict)
    deferred: set[int] = field(default_factory=set)
    unconfirmed: int = 0

    @classmethod
    def all_deferred(cls, count: int) -> ExportResult:
        return cls(deferred=set(range(count)))


class SinkClosedError(Exception):
    """The sink's output is gone for good (stdout's reader left): stop the exporter."""


class Sink(Protocol):
    """A backend the exporter delivers to.

    A sink that writes NDJSON may also have ``export_lines(kind, bodies, count)``: the
    consumer then hands it the batch's ``count`` records as NDJSON bodies instead (each
    message's body as published when all its records validated, the valid ones encoded
    again otherwise), and ``export`` is not called.
    """

    name: str

    async def start(self) -> None:
        """Prepare the backend (index template, channel); retried by the caller on error."""

    async def export(self, kind: Kind, records: Sequence[Record]) -> ExportResult:
        """Deliver ``records``; retries transient failures until done or shutting down."""
        ...

    async def force_flush(self) -> None:
        """Push out anything the sink itself buffers."""

    async def shutdown(self) -> None:
        """Stop retrying: exports under way answer ``deferred`` instead of waiting."""

    async def close(self) -> None:
        """Release connections (after the last export returned)."""
