"""flowscope's own error hierarchy.

One base class; typed subclasses carry their context and build their own message.
Library errors are chained as ``__cause__`` by the code that raises these.
"""

from __future__ import annotations


def described(error: BaseException) -> str:
    """An exception as a log field or message: its text, or its type's name when it has
    none (``TimeoutError()``, ``ConnectionResetError()``)."""
    return str(error) or type(error).__name__


PROBLEM_COPIES = 8  # distinct problems of one message dead-lettered apart; the rest share


def grouped(keys: list[str], apart: int = PROBLEM_COPIES) -> list[list[int]]:
    """The places of ``keys`` grouped by key, in order of first appearance: the first
    ``apart`` distinct keys a group each, the places of every later key one more group.
    For dead-letter copies, one per group: each copy's reason is then true of what it
    holds, and a batch whose problems each name a value (4 000 bad addresses, an
    Elasticsearch error naming each document) still makes at most ``apart + 1``."""
    groups: dict[str, list[int]] = {}
    rest: list[int] = []
    for i, key in enumerate(keys):
        if key in groups or len(groups) < apart:
            groups.setdefault(key, []).append(i)
        else:
            rest.append(i)
    return [*groups.values(), rest] if rest else list(groups.values())


def listed(reasons: list[str], most: int = 8) -> str:
    """Distinct reasons as one: the first ``most``, then how many more."""
    distinct = list(dict.fromkeys(reasons))
    more = [f"and {len(distinct) - most} more"] if len(distinct) > most else []
    return "; ".join(distinct[:most] + more)


class FlowscopeError(Exception):
    """Base of every error flowscope raises on purpose."""


class ConfigError(FlowscopeError):
    """A setting has a bad value: start-up stops with this one line and exit status 2."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"invalid setting {setting}: {problem}")


class StartupError(FlowscopeError):
    """The environment cannot run the service (missing capability, no BPF, ...): exit 2."""

    def __init__(self, check: str, problem: str) -> None:
        self.check = check
        self.problem = problem
        super().__init__(f"start-up check {check} failed: {problem}")


class ConnectionLostError(FlowscopeError):
    """A connection the service cannot get back by itself (nats-py closed it for good):
    the service stops with exit status 1 and its orchestrator starts it again."""

    def __init__(self, peer: str, problem: str) -> None:
        self.peer = peer
        self.problem = problem
        super().__init__(f"{peer} connection lost for good: {problem}")


class CodecError(FlowscopeError):
    """A message could not be decoded. ``reason`` is short and goes into DLQ headers."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SchemaMismatchError(CodecError):
    """The message names a schema or version this build does not read."""

    def __init__(self, expected: str, got: str | None) -> None:
        self.expected = expected
        self.got = got
        super().__init__("schema-mismatch", f"expected {expected}, got {got!r}")


class RecordError(CodecError):
    """One record in a batch does not satisfy the contract (missing key, wrong type)."""

    def __init__(self, schema: str, index: int, problem: str) -> None:
        self.schema = schema
        self.index = index
        self.problem = problem
        super().__init__("bad-record", f"{schema} record #{index}: {problem}")

    @staticmethod
    def summary(errors: list[RecordError], most: int = 8) -> str:
        """One reason for several bad records of one batch (a dead-letter copy's header):
        each problem once, with the places of the records that have it (the first
        ``most`` of them); the first ``most`` problems, then how many more."""
        by_problem: dict[str, list[int]] = {}
        for e in errors:
            by_problem.setdefault(e.problem, []).append(e.index)
        parts = []
        for problem, places in list(by_problem.items())[:most]:
            listed = ", ".join(f"#{i}" for i in places[:most])
            more = f" and {len(places) - most} more" if len(places) > most else ""
            noun = "record" if len(places) == 1 else "records"
            parts.append(f"{noun} {listed}{more}: {problem}")
        if len(by_problem) > most:
            parts.append(f"and {len(by_problem) - most} more problems")
        return f"bad-record: {errors[0].schema} " + "; ".join(parts)
