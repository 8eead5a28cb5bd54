"""Types of the compiled flow core (services/enricher/flowcore.c)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

def configure(
    *,
    render_line: Callable[..., bytes],
    record_error: type[Exception],
    strings: dict[str, bytes],
    json_str: Callable[[str], bytes],
    process_json: Callable[[Any], tuple[bytes, bytes]],
    transports: list[bytes],
    flags: list[bytes],
    end_reasons: Iterable[str],
    flows_prefix: str,
    directions: Sequence[str],
    kinds: Sequence[str],
    loads: Callable[[bytes], Any],
) -> None: ...
def flow_lines(enricher: Any, records: Iterable[Any], now: float, out: Any) -> None: ...

SHA_NI: int

def sha1(data: bytes, hardware: bool) -> bytes: ...
def sided_json(address: str, kind: str, meta: dict[str, Any]) -> tuple[bytes, bytes] | None: ...
def flow_body(enricher: Any, body: bytes, lines: int, now: float, out: Any) -> bool: ...
def learn_addresses(enricher: Any, texts: list[str], out: Any) -> None: ...

class Lines:
    """A raw batch's enriched lines by subject, as flow_body rendered them."""

    @property
    def subjects(self) -> tuple[str, ...]: ...
    @property
    def count(self) -> int: ...
    def lines(self) -> dict[str, list[bytes]]: ...
    def __len__(self) -> int: ...

def merge_lines(parts: list[Lines] | tuple[Lines, ...]) -> Lines:
    """A new Lines of the parts' lines, part after part (one part or more)."""

def frame_atomic(
    lines: dict[str, list[bytes]] | Lines,
    head: bytes,
    msg_id: bytes,
    marks: bytes,
    commit: bytes,
    last_id: bytes | tuple[bytes, ...],
    reply: str,
    max_body: int,
) -> tuple[bytes, int, int] | None:
    """``last_id``: the end of the commit's id after ``msg_id``, or a tuple of k ids: the
    last k messages' ids in full (None when there are fewer than k messages)."""

class Frame:
    """frame_atomic's bytes of a Lines, gathered where they are, to be sent."""

    def send(self, fd: int) -> int: ...
    def rest(self) -> bytes: ...
    def __len__(self) -> int: ...

def gather_atomic(
    lines: Lines,
    head: bytes,
    msg_id: bytes,
    marks: bytes,
    commit: bytes,
    last_id: bytes | tuple[bytes, ...],
    reply: str,
    max_body: int,
) -> tuple[Frame, int, int] | None: ...
