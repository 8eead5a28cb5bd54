"""``flowscope observe``: a live terminal view of enriched flows, like ``hubble observe``.

It reads the enriched flow subjects (``flowscope.flows.<src-ns>.<dst-ns>``) from NATS and
prints one line per flow record — or the raw record with ``-o json``. Filters are ANDed;
a comma-separated list inside one filter is ORed. Where a filter is part of the subject
(the namespace), the subscription is narrowed on the server; everything else is checked
here, on the decoded record.

Like ``hubble observe``, ``--last N`` prints the newest N matching records from the
``FLOWSCOPE_FLOWS`` JetStream stream and exits; with ``--follow`` it then follows the
stream from the sequence after the replay's snapshot — so no record is missed or printed
twice between the replay and the live view. The replay reads backwards in growing windows
of stream sequences. Without ``--last``, observe follows live until stopped (where
``hubble observe`` would print a recent window and exit): a live view is what a bare
``flowscope observe`` is for.

A message that does not decode, or a record that breaks the contract, is skipped with a
rate-limited warning on stderr; observe keeps going.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import logging
import os
import re
import stat
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from flowscope.core import codec, messaging, subjects
from flowscope.core.config import section, setting, without_secrets
from flowscope.core.errors import CodecError, StartupError
from flowscope.core.logs import RateLimitedLog
from flowscope.core.messaging import NatsSettings
from flowscope.core.records import TRANSPORTS, transport_name, validate_flow
from flowscope.core.runtime import Runtime, RuntimeSettings, run
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError

log = logging.getLogger("flowscope.observe")

SIDES = ("source", "destination")
Record = dict[str, Any]


# ---------------------------------------------------------------- settings


def _ports(values: tuple[int, ...]) -> tuple[int, ...]:
    for value in values:
        if not 0 <= value <= 65535:
            raise ValueError(f"{value} is not a port (0-65535)")
    return values


# What network.transport holds for each keyword or number a user may type (Hubble's
# spelling of ICMPv6 included): the keyword, or the number as text when IANA has none
# that flowscope names.
_TRANSPORT_WORDS = {
    **{name: name for name in TRANSPORTS.values()},
    **{str(number): transport_name(number) for number in range(256)},
    "icmpv6": "ipv6-icmp",
}


def _transports(values: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for value in (v.lower() for v in values):
        if value not in _TRANSPORT_WORDS:
            raise ValueError(
                f"{value!r} is no transport: an IANA keyword (tcp, udp, icmp, ipv6-icmp, "
                "sctp, gre, ...) or a protocol number 0-255"
            )
        out.append(_TRANSPORT_WORDS[value])
    return tuple(out)


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


@dataclass(frozen=True, slots=True)
class Filters:
    """Which flows to show: every filter given must match (comma lists match any item)."""

    namespace: tuple[str, ...] = setting(
        (), "namespace of either endpoint (narrows the NATS subscription by subject)"
    )
    pod: tuple[str, ...] = setting(
        (), "pod of either endpoint: NAME or NAMESPACE/NAME, shell wildcards allowed"
    )
    workload: tuple[str, ...] = setting(
        (), "workload (Deployment, StatefulSet, ...) of either endpoint: NAME or NAMESPACE/NAME"
    )
    domain: tuple[str, ...] = setting(
        (), "DNS name either endpoint was resolved from, wildcards allowed (*.example.com)"
    )
    port: tuple[int, ...] = setting((), "port of either endpoint", parse=_ports)
    protocol: tuple[str, ...] = setting(
        (),
        "transport keyword (tcp, udp, icmp, ipv6-icmp, sctp, ...) or protocol number",
        parse=_transports,
    )
    node: tuple[str, ...] = setting(
        (), "node that observed the flow, or the node of either endpoint's pod"
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Settings of ``flowscope observe``."""

    nats: NatsSettings = section(NatsSettings, "NATS connection")
    filters: Filters = section(Filters, "which flows to show", flat=True)
    output: str = setting(
        "text", "text: one readable line per flow; json: the raw record", choices=("text", "json"),
        short="-o",
    )  # fmt: skip
    last: int = setting(
        0,
        "print the newest N matching records from JetStream and exit (0: follow live only)",
        parse=_non_negative,
    )
    follow: bool = setting(
        False,
        "with --last: keep following live after the replay (without --last, observe always "
        "follows)",
        short="-f",
    )
    color: str = setting(
        "auto",
        "auto: colour when stdout is a terminal and NO_COLOR is unset",
        choices=("auto", "always", "never"),
    )


# ---------------------------------------------------------------- subjects


def subscription_subjects(filters: Filters) -> list[str]:
    """The narrowest subjects that still carry every flow the filters can match."""
    if not filters.namespace:
        return [subjects.FLOWS_ALL]
    out: list[str] = []
    for namespace in filters.namespace:
        tok = subjects.token(namespace)
        for subject in (f"{subjects.FLOWS}.{tok}.*", f"{subjects.FLOWS}.*.{tok}"):
            if subject not in out:
                out.append(subject)
    return out


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, got = pattern.split("."), subject.split(".")
    for i, tok in enumerate(want):
        if tok == ">":
            return len(got) > i
        if i >= len(got) or (tok != "*" and tok != got[i]):
            return False
    return len(got) == len(want)


def first_match(patterns: Sequence[str], subject: str) -> int:
    """Index of the first pattern matching ``subject`` (-1: none).

    Overlapping subscriptions (``ns.*`` and ``*.ns`` both match ``ns.ns``) each receive
    the message; only the first matching one shows it.
    """
    for i, pattern in enumerate(patterns):
        if subject_matches(pattern, subject):
            return i
    return -1


# ---------------------------------------------------------------- filtering


def _name_matches(patterns: Iterable[str], namespace: Any, name: Any) -> bool:
    if not isinstance(name, str):
        return False
    for pattern in patterns:
        want_ns, slash, want_name = pattern.rpartition("/")
        if slash and not (isinstance(namespace, str) and fnmatch.fnmatchcase(namespace, want_ns)):
            continue
        if fnmatch.fnmatchcase(name, want_name):
            return True
    return False


def _either(test: Callable[[Record, str], bool]) -> Callable[[Record], bool]:
    return lambda record: any(test(record, side) for side in SIDES)


def compile_filters(filters: Filters) -> Callable[[Record], bool]:
    """One predicate over a record wire dict for all the filters given."""
    checks: list[Callable[[Record], bool]] = []
    f = filters
    if f.namespace:
        tokens = {subjects.token(namespace) for namespace in f.namespace}
        checks.append(_either(lambda r, s: endpoint_token(r, s) in tokens))
    if f.pod:
        checks.append(_either(lambda r, s: _name_matches(
            f.pod, r.get(f"{s}.k8s.namespace.name"), r.get(f"{s}.k8s.pod.name"))))  # fmt: skip
    if f.workload:
        checks.append(_either(lambda r, s: _name_matches(
            f.workload, r.get(f"{s}.k8s.namespace.name"), r.get(f"{s}.k8s.workload.name"))))  # fmt: skip
    if f.domain:
        checks.append(_either(lambda r, s: _domain_matches(f.domain, r.get(f"{s}.domain"))))
    if f.port:
        checks.append(_either(lambda r, s: r.get(f"{s}.port") in f.port))
    if f.protocol:
        checks.append(lambda r: r.get("network.transport") in f.protocol)
    if f.node:
        checks.append(lambda r: _node_matches(f.node, r))
    return lambda record: all(check(record) for check in checks)


def endpoint_token(record: Record, side: str) -> str | None:
    """The subject token the enricher publishes this endpoint under, so that
    ``--namespace _host`` keeps the records its subscription to ``*._host`` receives."""
    kind = record.get(f"{side}.kind")
    if isinstance(kind, str) and kind in subjects.KIND_TOKENS:
        return subjects.KIND_TOKENS[kind]
    namespace = record.get(f"{side}.k8s.namespace.name")
    return subjects.token(namespace) if isinstance(namespace, str) else None


def _domain_matches(patterns: Iterable[str], domain: Any) -> bool:
    if not isinstance(domain, str):
        return False
    name = domain.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(name, p.lower().rstrip(".")) for p in patterns)


def _node_matches(nodes: tuple[str, ...], record: Record) -> bool:
    names = [record.get("observer.node.name")] + [record.get(f"{s}.k8s.node.name") for s in SIDES]
    return any(isinstance(n, str) and _name_matches(nodes, None, n) for n in names)


# ---------------------------------------------------------------- rendering


def printable(text: str) -> str:
    """``text`` with every character a terminal would not show as itself escaped
    (``\\x1b``, ``\\u202e``): pod, process and DNS names come from whoever runs the
    workload, and one holding ESC or a C1 control could otherwise retitle, clear or
    rewrite the user's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# What orjson writes unescaped that a terminal may take as a control: DEL and the C1
# controls (U+009B is CSI); it escapes C0 itself. Outside strings its output is ASCII.
_JSON_CONTROLS = re.compile("[\x7f-\x9f]")

_ANSI = {"time": "2", "source": "32", "destination": "36", "flags": "33", "reset": "31"}


@dataclass(frozen=True, slots=True)
class Palette:
    """ANSI colours by role, or none at all."""

    enabled: bool
    arrow: str = "→"

    def paint(self, role: str, text: str) -> str:
        if not self.enabled:
            return text
        return f"\x1b[{_ANSI[role]}m{text}\x1b[0m"


def choose_palette(mode: str, out: TextIO, env: Mapping[str, str]) -> Palette:
    """Colour for ``always``; for ``auto`` only on a terminal without ``NO_COLOR`` set."""
    if mode == "always":
        enabled = True
    elif mode == "never":
        enabled = False
    else:
        enabled = out.isatty() and not env.get("NO_COLOR")
    try:
        "→".encode(out.encoding or "ascii")
        arrow = "→"
    except (UnicodeEncodeError, LookupError):
        arrow = "->"
    return Palette(enabled, arrow)


def human_bytes(n: int) -> str:
    """Bytes for people: exact below 1 KiB, one decimal above."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _address(record: Record, side: str) -> str:
    address, port = record.get(f"{side}.address", "?"), record.get(f"{side}.port", 0)
    if ":" in str(address):
        address = f"[{address}]"
    return f"{address}:{port}" if port else str(address)


def endpoint_label(record: Record, side: str) -> str:
    """``ns/pod:port``, ``service ns/name:port``, ``node/name:port`` or ``address:port``."""
    get = record.get
    port = get(f"{side}.port", 0)
    suffix = f":{port}" if port else ""
    namespace, pod = get(f"{side}.k8s.namespace.name"), get(f"{side}.k8s.pod.name")
    service = get(f"{side}.k8s.service.name")
    kind = get(f"{side}.kind")
    if pod:
        label = f"{namespace}/{pod}{suffix}" if namespace else f"{pod}{suffix}"
    elif service:
        label = f"service {namespace}/{service}{suffix}" if namespace else f"service {service}"
    elif kind == "node" and get(f"{side}.k8s.node.name"):
        label = f"node/{get(f'{side}.k8s.node.name')}{suffix}"
    else:
        label = _address(record, side)
    domain = get(f"{side}.domain")
    if domain:
        label += f" ({domain})"
    process = _process(record, side)
    return printable(f"{label} {process}" if process else label)


def _process(record: Record, side: str) -> str:
    name, pid = record.get(f"{side}.process.executable.name"), record.get(f"{side}.process.pid")
    if name and pid:
        return f"[{name} pid {pid}]"
    if name or pid:
        return f"[{name}]" if name else f"[pid {pid}]"
    return ""


def _clock(ns: Any) -> str:
    if not isinstance(ns, int):
        return "--:--:--.---"
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%b %d %H:%M:%S", time.localtime(seconds)) + f".{rest // 1_000_000:03d}"


def render_line(record: Record, palette: Palette) -> str:
    """One readable line: time, source → destination, transport, bytes, flags, node."""
    arrow = palette.arrow if record.get("flow.direction") == "forward" else "<>"
    head = "{}  {} {} {}".format(
        palette.paint("time", _clock(record.get("flow.end_ns"))),
        palette.paint("source", endpoint_label(record, "source")),
        arrow,
        palette.paint("destination", endpoint_label(record, "destination")),
    )
    sent = human_bytes(record.get("flow.bytes.delta", 0))
    back = human_bytes(record.get("flow.reverse.bytes.delta", 0))
    transport = printable(str(record.get("network.transport", "?")))
    tail = [transport, f"{sent} {palette.arrow} {back} back"]
    flags = record.get("flow.tcp.flags.tags")
    if flags:
        role = "reset" if "RST" in flags else "flags"
        tail.append(palette.paint(role, printable(",".join(str(f) for f in flags))))
    tail.append(printable(f"on {record.get('observer.node.name', '?')}"))
    return head + "  " + "  ".join(tail)


def render_json(record: Record, palette: Palette) -> str:
    """The record as received, one JSON object per line; DEL and C1 controls escaped
    (``\\u009b``), which JSON reads back as the same string. Written as the codec writes
    records: one nested deeper than orjson writes (254 levels; the codec reads 1 024)
    ended a replay with a traceback and lost the rest of a live batch."""
    (line,) = codec.encode_lines([record])
    return _JSON_CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", line[:-1].decode())


# ---------------------------------------------------------------- showing


@dataclass(slots=True)
class Viewer:
    """Decodes messages, filters their records and writes one line per record."""

    keep: Callable[[Record], bool]
    render: Callable[[Record, Palette], str]
    palette: Palette
    out: TextIO
    warnings: RateLimitedLog
    on_closed: Callable[[], None]
    closed: bool = False

    def records(self, subject: str, headers: Mapping[str, str] | None, body: bytes) -> list[Record]:
        """Records of one message that pass the filters; bad input warns and is skipped."""
        try:
            batch = codec.decode(codec.FLOW, headers, body)
        except CodecError as e:
            self.warnings.warning("bad-message", printable(f"skipped a message on {subject}: {e}"))
            return []
        kept = []
        for index, record in enumerate(batch):
            try:
                validate_flow(record, index)
            except CodecError as e:
                self.warnings.warning(
                    "bad-record", printable(f"skipped a record on {subject}: {e}")
                )
                continue
            if self.keep(record):
                kept.append(record)
        return kept

    def show(self, records: Iterable[Record]) -> None:
        if self.closed:
            return
        text = "".join(self.render(r, self.palette) + "\n" for r in records)
        if not text:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.close()

    def close(self) -> None:
        """The reader went away (``| head``): stop quietly, without a traceback at exit.

        Called by a failed write or by :func:`watch_pipe`, whichever notices first.
        """
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
        self.on_closed()


def watch_pipe(out: TextIO, viewer: Viewer, rt: Runtime) -> None:
    """Close the viewer as soon as the reader of a stdout pipe goes away (``| head``),
    not only at the next write: an idle pipeline may have nothing to write for long.

    Once a pipe has no reader left, the kernel flags its write end with an error, which
    epoll reports whatever events were asked for; a write-only end never becomes
    readable, so a reader callback on it fires then and only then.
    """
    try:
        fd = out.fileno()
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        write_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
    except (OSError, ValueError):  # no file descriptor behind ``out`` (a StringIO)
        return
    if not (is_pipe and write_only):  # a terminal or read-write FIFO can become readable
        return
    loop = asyncio.get_running_loop()

    def reader_gone() -> None:
        loop.remove_reader(fd)
        viewer.close()

    loop.add_reader(fd, reader_gone)
    rt.stack.callback(loop.remove_reader, fd)


# ---------------------------------------------------------------- following


async def follow_core(nc: NATS, patterns: list[str], viewer: Viewer) -> None:
    """Live only: one core subscription per subject pattern, overlaps shown once."""
    for index, pattern in enumerate(patterns):

        async def handle(msg: Msg, index: int = index) -> None:
            if first_match(patterns, msg.subject) == index:
                viewer.show(viewer.records(msg.subject, msg.headers, msg.data))

        await nc.subscribe(pattern, cb=handle)


def stream_filter(patterns: list[str]) -> str:
    """One consumer filter subject: JetStream rejects overlapping filter lists."""
    return patterns[0] if len(patterns) == 1 else subjects.FLOWS_ALL


def _from_sequence(start: int) -> ConsumerConfig:
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)


async def messages_in_range(
    js: JetStreamContext, subject: str, start: int, end: int
) -> AsyncIterator[Msg]:
    """The stream's messages on ``subject`` with sequences in ``[start, end]``, in order."""
    sub = await js.subscribe(
        subject, stream=subjects.STREAM_FLOWS, ordered_consumer=True, config=_from_sequence(start)
    )
    try:
        info = await sub.consumer_info()
        # The server may already have pushed some (or all) messages when the info is
        # taken: what the consumer has to give is what it delivered plus what is pending.
        delivered = info.delivered.consumer_seq if info.delivered else 0
        pending = (info.num_pending or 0) + delivered
        while pending:
            msg = await sub.next_msg(timeout=10)
            meta = msg.metadata
            if meta.sequence.stream > end:
                break
            yield msg
            pending = meta.num_pending
            if meta.sequence.stream == end:
                break
    finally:
        await sub.unsubscribe()


async def newest_records(
    js: JetStreamContext, patterns: list[str], viewer: Viewer, count: int, first: int, last: int
) -> list[Record]:
    """The newest ``count`` matching records with stream sequences in ``[first, last]``.

    Reads backwards in windows of sequences that grow fourfold, so a short replay of a
    long stream reads only its tail; each window keeps only the records still needed,
    so memory stays bounded by ``count`` records whatever the window size.
    """
    subject = stream_filter(patterns)
    found: deque[Record] = deque()
    end, size = last, max(count, 64)
    while end >= first and len(found) < count:
        start = max(first, end - size + 1)
        window: deque[Record] = deque(maxlen=count - len(found))
        async for msg in messages_in_range(js, subject, start, end):
            if first_match(patterns, msg.subject) >= 0:
                window.extend(viewer.records(msg.subject, msg.headers, msg.data))
        found.extendleft(reversed(window))
        end, size = start - 1, size * 4
    return list(found)


async def replay(nc: NATS, patterns: list[str], viewer: Viewer, count: int, follow: bool) -> None:
    """``--last N``: show the newest N records from JetStream; with ``follow``, then
    follow the stream from where the replay ended.

    Without the stream there is nothing to print: one line and exit 2 (``StartupError``),
    or, when following, a warning and the live view — there is still something to show.
    """
    js = nc.jetstream()
    try:
        state = (await js.stream_info(subjects.STREAM_FLOWS)).state
    except (NotFoundError, ServiceUnavailableError) as e:
        # ServiceUnavailableError: no JetStream on the server (nats-py's answer when
        # nothing responds on the JetStream API), so no stream either.
        missing = f"JetStream stream {subjects.STREAM_FLOWS}"
        if isinstance(e, ServiceUnavailableError):
            missing = "JetStream on the server"
        if not follow:
            raise StartupError("replay", f"no {missing}: nothing to replay") from e
        log.warning(f"no {missing}: nothing to replay")
        await follow_core(nc, patterns, viewer)
        return
    # An empty stream reports first_seq 0, which no consumer accepts as a start: nothing
    # to replay, follow from the next sequence.
    if state.messages:
        first, last = state.first_seq, state.last_seq
        viewer.show(await newest_records(js, patterns, viewer, count, first, last))
    if not follow:
        return

    async def handle(msg: Msg) -> None:
        if first_match(patterns, msg.subject) >= 0:
            viewer.show(viewer.records(msg.subject, msg.headers, msg.data))

    await js.subscribe(
        stream_filter(patterns),
        stream=subjects.STREAM_FLOWS,
        ordered_consumer=True,
        config=_from_sequence(state.last_seq + 1),
        cb=handle,
    )


# ---------------------------------------------------------------- service


def build_viewer(settings: Settings, out: TextIO, rt: Runtime) -> Viewer:
    render = render_json if settings.output == "json" else render_line
    return Viewer(
        keep=compile_filters(settings.filters),
        render=render,
        palette=choose_palette(settings.color, out, os.environ),
        out=out,
        warnings=RateLimitedLog(log, interval=5.0),
        on_closed=rt.stop,
    )


async def connect(nats: NatsSettings, rt: Runtime) -> NATS:
    """Connect once, or fail with one line (exit 2) — an interactive command must not hang.

    ``messaging.connect(retry=False)`` still cycles through reconnect attempts forever in
    nats-py (``max_reconnect_attempts=-1`` also governs the first connection), so the
    attempt is bounded here.
    """
    timeout = nats.connect_timeout * 2
    try:
        async with asyncio.timeout(timeout):
            nc = await messaging.connect(nats, "observe", rt.registry, retry=False)
    except TimeoutError as e:
        shown = without_secrets(nats.url)
        raise StartupError("nats", f"cannot connect to {shown} within {timeout:g} s") from e
    rt.stack.push_async_callback(messaging.close, nc)
    rt.spawn(messaging.until_lost(nc, rt.stopping), "nats")
    return nc


async def observe(rt: Runtime, settings: Settings, out: TextIO) -> None:
    """Connect, then print a replay and stop (``--last`` alone), or subscribe (after a
    replay with ``--last N --follow``) and show flows until stopped."""
    nc = await connect(settings.nats, rt)
    patterns = subscription_subjects(settings.filters)
    viewer = build_viewer(settings, out, rt)
    watch_pipe(out, viewer, rt)
    try:
        if settings.last:
            await replay(nc, patterns, viewer, settings.last, settings.follow)
        else:
            await follow_core(nc, patterns, viewer)
    except TimeoutError as e:
        raise StartupError("replay", f"JetStream did not answer: {e!r}") from e
    if settings.last and not settings.follow:
        rt.stop()  # everything asked for is printed: exit 0
        return
    await messaging.flush(nc)  # the server has our subscriptions before we say we are ready
    print(f"observing {', '.join(patterns)} on {without_secrets(settings.nats.url)} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)  # fmt: skip
    rt.spawn(rt.wait_stopping(), "observe")


def main(settings: Settings) -> int:
    """Show flows until Ctrl-C / SIGTERM, or a ``--last`` replay; exit 0, or 2 when NATS
    (or, for a replay alone, its stream) cannot be reached."""
    runtime = RuntimeSettings(
        log_format="text", log_level="warning", http_address="", drain_timeout=2.0
    )
    return run("observe", runtime, lambda rt: observe(rt, settings, sys.stdout))
