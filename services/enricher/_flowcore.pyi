"""Types of the compiled flow core (services/enricher/flowcore.c)."""

from collections.abc import Callable, Iterable
from typing import Any

def configure(*, render_line: Callable[..., bytes], record_error: type[Exception]) -> None: ...
def flow_lines(enricher: Any, records: Iterable[Any], now: float, out: Any) -> None: ...
