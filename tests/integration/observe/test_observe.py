"""`flowscope observe` as a user runs it: a subprocess against a real nats-server.

The test publishes enriched flow records (built with the contract's value types and the
real codec) on the subjects the enricher uses and reads what observe prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import select
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from flowscope.core import codec, messaging, records, subjects

from tests.support import flows, nats_server
from tests.support.flows import external, flow, pod
from tests.support.nats_server import NatsServer

FLOWSCOPE = str(Path(sys.executable).parent / "flowscope")
TIMEOUT = 30.0  # generous: the machine is shared with other test runs

CART = pod("shop", "cart-1", "10.0.0.5", 41234, process_executable_name="curl", process_pid=4321)
PG = pod("db", "postgres-0", "10.0.1.9", 5432)
INVENTORY = pod("shop", "inventory-2", "10.0.0.7", 8080)
FRONT = pod("web", "front-1", "10.0.2.3", 51000)
API = pod("web", "api-1", "10.0.2.4", 8443)
PAY = pod("payments", "pay-0", "10.0.3.1", 52000)


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without FLOWSCOPE_* or NO_COLOR leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    env.pop("NO_COLOR", None)
    return {**env, **extra}


@dataclass
class Observer:
    """A running `flowscope observe` with its stdout lines and stderr collected."""

    proc: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)
    _stderr_task: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Wait for the one-line banner observe prints once subscribed."""
        assert self.proc.stderr is not None
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), TIMEOUT)
            assert line, f"observe exited early: {''.join(self.stderr)}"
            self.stderr.append(line.decode())
            if line.startswith(b"observing "):
                break
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode())

    async def lines(self, count: int) -> list[str]:
        assert self.proc.stdout is not None
        out = []
        for _ in range(count):
            line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
            assert line, f"observe exited: {''.join(self.stderr)}"
            out.append(line.decode().rstrip("\n"))
        return out

    async def until(self, marker: str) -> list[str]:
        """Lines up to and including the first one containing ``marker``."""
        out: list[str] = []
        while not out or marker not in out[-1]:
            out += await self.lines(1)
        return out

    async def interrupt(self) -> int:
        """Ctrl-C: observe must stop cleanly with status 0."""
        self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        if self._stderr_task is not None:
            await asyncio.wait_for(self._stderr_task, TIMEOUT)
        return code


@contextlib.asynccontextmanager
async def observe(
    server: NatsServer, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Observer]:
    proc = await asyncio.create_subprocess_exec(
        FLOWSCOPE, "observe", "--nats-url", server.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env or _env(),
    )  # fmt: skip
    observer = Observer(proc)
    try:
        await observer.ready()
        yield observer
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class Finished:
    """A `flowscope observe` that ended by itself: its status, stdout lines and stderr."""

    code: int
    lines: list[str]
    stderr: str


async def observe_once(server: NatsServer, *args: str) -> Finished:
    """Run observe expecting it to end by itself (``--last N`` without ``--follow``)."""
    proc = await asyncio.create_subprocess_exec(
        FLOWSCOPE, "observe", "--nats-url", server.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode().splitlines(), err.decode())


async def publish(nc: Any, *records: dict[str, Any]) -> None:
    """Each record in its own message, on the subject the enricher would use."""
    for record in records:
        b = flows.batch(record)
        await nc.publish(flows.subject_of(record), b.body, headers=b.headers)
    await messaging.flush(nc)


def after_time(line: str) -> str:
    """A text line without its local-time prefix (``Nov 14 22:13:20.000``)."""
    return line.split("  ", 1)[1]


async def test_namespace_filter_prints_readable_lines_once(nats_srv: NatsServer, nc: Any) -> None:
    async with observe(nats_srv, "--namespace", "shop") as obs:
        await publish(
            nc,
            flow(CART, PG),  # shop → db: on flowscope.flows.shop.db
            flow(FRONT, API),  # web → web: not even delivered
            flow(CART, INVENTORY, flags=["SYN", "ACK", "FIN"]),  # shop.shop: both subscriptions
            flow(PAY, INVENTORY, transport="udp"),  # payments → shop
            flow(CART, external("93.184.216.34", 443, "example.com")),  # shop → _external
        )
        # One sentinel per subscription: each subscription is FIFO, so once both show,
        # everything published before them has been shown (or filtered).
        await publish(nc, flow(CART, pod("shop", "sentinel-a", "10.0.0.99", 1)))
        await publish(nc, flow(pod("zz", "sentinel-b", "10.9.9.9", 2), INVENTORY))
        lines = await obs.until("sentinel")
        lines += await obs.until("sentinel")
        assert await obs.interrupt() == 0

    shown = sorted(after_time(line) for line in lines if "sentinel" not in line)
    assert shown == sorted([
        "shop/cart-1:41234 [curl pid 4321] → db/postgres-0:5432  tcp  1.2 KiB → 3.3 KiB back"
        "  SYN,ACK  on node-a",
        "shop/cart-1:41234 [curl pid 4321] → shop/inventory-2:8080  tcp  1.2 KiB → 3.3 KiB back"
        "  SYN,ACK,FIN  on node-a",
        "payments/pay-0:52000 → shop/inventory-2:8080  udp  1.2 KiB → 3.3 KiB back  on node-a",
        "shop/cart-1:41234 [curl pid 4321] → 93.184.216.34:443 (example.com)  tcp"
        "  1.2 KiB → 3.3 KiB back  SYN,ACK  on node-a",
    ])  # fmt: skip
    assert not any("\x1b" in line for line in lines), "colour on a pipe"


FILTER_CASES = {
    "pod with namespace and wildcard": (["--pod", "db/postgres-*"], [0]),
    "port and protocol": (["--port", "53", "--protocol", "UDP"], [2]),
    "domain wildcard": (["--domain", "*.example.com"], [3]),
    "observing node, comma list": (["--node", "node-b,node-c"], [1, 4]),
    "workload name": (["--workload", "web/api"], [4]),
}


@pytest.mark.parametrize("case", FILTER_CASES)
async def test_filters_select_the_right_records_as_json(
    nats_srv: NatsServer, nc: Any, case: str
) -> None:
    args, expected = FILTER_CASES[case]
    dns_server = pod("kube-system", "coredns-1", "10.0.9.2", 53)
    api = pod("web", "api-1", "10.0.2.4", 8443, k8s_workload_name="api")
    published = [
        flow(CART, PG),
        flow(FRONT, API, node="node-b"),
        flow(CART, dns_server, transport="udp"),
        flow(CART, external("203.0.113.7", 443, "api.example.com.")),
        flow(FRONT, api, node="node-c"),
    ]
    async with observe(nats_srv, "-o", "json", *args) as obs:
        await publish(nc, *published)
        # A single subscription is FIFO: reading exactly as many lines as expected and
        # finding exactly the expected records proves nothing else was let through
        # before the last expected one.
        got = [orjson.loads(line) for line in await obs.lines(len(expected))]
        assert await obs.interrupt() == 0
    assert got == [published[i] for i in expected]


async def _fresh_flows_stream(nc: Any) -> Any:
    js = nc.jetstream()
    with contextlib.suppress(Exception):
        await js.delete_stream(subjects.STREAM_FLOWS)
    await messaging.ensure_streams(js, messaging.NatsSettings())
    return js


async def test_last_replays_newest_matching_records_then_follows_live(
    nats_srv: NatsServer, nc: Any
) -> None:
    js = await _fresh_flows_stream(nc)
    shop = [flow(CART, PG, sent=i) for i in range(1, 6)]
    # Matching records in multi-record batches, then enough other traffic that the
    # backwards replay needs more than its first window of stream sequences.
    for chunk in (shop[:2], [flow(FRONT, API), shop[2]], shop[3:]):
        b = flows.batch(*chunk)
        await js.publish(subjects.flows("shop", "db"), b.body, headers=b.headers)
    # One more matching record lands in the newest window, so the replay spans two.
    middle = flow(PAY, INVENTORY, sent=77)
    for i in range(150):
        record = middle if i == 100 else flow(FRONT, API, sent=i)
        b = flows.batch(record)
        await js.publish(flows.subject_of(record), b.body, headers=b.headers)

    async with observe(
        nats_srv, "--last", "3", "--follow", "true", "--namespace", "shop", "-o", "json"
    ) as obs:
        replayed = [orjson.loads(line) for line in await obs.lines(3)]
        live = flow(CART, INVENTORY, sent=99)
        b = flows.batch(live)
        await js.publish(subjects.flows("shop", "shop"), b.body, headers=b.headers)
        followed = [orjson.loads(line) for line in await obs.lines(1)]
        assert await obs.interrupt() == 0
    assert replayed == [*shop[3:], middle]
    assert followed == [live]


async def test_last_prints_the_newest_records_and_exits(nats_srv: NatsServer, nc: Any) -> None:
    """Regression: like ``hubble observe --last N``, ``--last`` alone prints and exits 0;
    it used to go on following live until Ctrl-C."""
    js = await _fresh_flows_stream(nc)
    records = [flow(CART, PG, sent=i) for i in range(1, 6)]
    for record in records:
        b = flows.batch(record)
        await js.publish(flows.subject_of(record), b.body, headers=b.headers)
    done = await observe_once(nats_srv, "--last", "3", "-o", "json")
    assert done.code == 0, done.stderr
    assert [orjson.loads(line) for line in done.lines] == records[2:]
    assert "observing" not in done.stderr, done.stderr


async def test_last_larger_than_the_stream_prints_everything_and_exits(
    nats_srv: NatsServer, nc: Any
) -> None:
    js = await _fresh_flows_stream(nc)
    records = [flow(CART, PG, sent=1), flow(PAY, INVENTORY, sent=2)]
    for record in records:
        b = flows.batch(record)
        await js.publish(flows.subject_of(record), b.body, headers=b.headers)
    done = await observe_once(nats_srv, "--last", "50", "-o", "json")
    assert done.code == 0, done.stderr
    assert [orjson.loads(line) for line in done.lines] == records


async def test_last_on_an_empty_stream_prints_nothing_and_exits(
    nats_srv: NatsServer, nc: Any
) -> None:
    await _fresh_flows_stream(nc)
    done = await observe_once(nats_srv, "--last", "5")
    assert (done.code, done.lines) == (0, []), done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("jetstream", [True, False], ids=["no stream", "no JetStream"])
async def test_last_without_the_stream_is_one_line_and_exit_2(jetstream: bool) -> None:
    """Nothing to print and nothing to follow: one line naming what is missing."""
    server = nats_server.start(jetstream=jetstream)
    try:
        done = await observe_once(server, "--last", "5")
    finally:
        server.close()
    missing = "JetStream stream FLOWSCOPE_FLOWS" if jetstream else "JetStream on the server"
    assert (done.code, done.lines) == (2, []), done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.endswith(f"replay failed: no {missing}: nothing to replay"), line


async def test_follow_from_its_variable_replays_then_follows(nats_srv: NatsServer, nc: Any) -> None:
    js = await _fresh_flows_stream(nc)
    old = flow(CART, PG, sent=1)
    b = flows.batch(old)
    await js.publish(flows.subject_of(old), b.body, headers=b.headers)
    env = _env(FLOWSCOPE_FOLLOW="true")
    async with observe(nats_srv, "--last", "5", "-o", "json", env=env) as obs:
        replayed = [orjson.loads(line) for line in await obs.lines(1)]
        live = flow(PAY, INVENTORY, sent=2)
        b = flows.batch(live)
        await js.publish(flows.subject_of(live), b.body, headers=b.headers)
        followed = [orjson.loads(line) for line in await obs.lines(1)]
        assert await obs.interrupt() == 0
    assert (replayed, followed) == ([old], [live])


async def test_last_on_an_empty_stream_follows_live(nats_srv: NatsServer, nc: Any) -> None:
    """Regression: an empty stream reports first_seq 0, which the server refuses as a
    consumer start; observe died with a traceback instead of following live."""
    js = await _fresh_flows_stream(nc)
    async with observe(nats_srv, "--last", "5", "-f", "-o", "json") as obs:
        live = flow(CART, PG)
        b = flows.batch(live)
        await js.publish(flows.subject_of(live), b.body, headers=b.headers)
        got = [orjson.loads(line) for line in await obs.lines(1)]
        assert await obs.interrupt() == 0
    assert got == [live]


async def test_last_and_follow_without_jetstream_warns_and_follows_live() -> None:
    """Regression: against a nats-server without JetStream, ``stream_info`` raised
    ServiceUnavailableError (not NotFoundError) and observe died with a traceback."""
    server = nats_server.start(jetstream=False)
    try:
        nc = await nats.connect(server.url)
        try:
            async with observe(server, "--last", "5", "--follow", "1", "-o", "json") as obs:
                live = flow(CART, PG)
                await publish(nc, live)
                got = [orjson.loads(line) for line in await obs.lines(1)]
                code = await obs.interrupt()
        finally:
            await nc.close()
    finally:
        server.close()
    stderr = "".join(obs.stderr)
    assert code == 0, stderr
    assert got == [live]
    assert "nothing to replay" in stderr, stderr
    assert "Traceback" not in stderr, stderr


HOST = records.Endpoint("10.226.0.10", 40000, "host")
NODE = records.Endpoint("10.0.0.1", 10250, "node", {"k8s.node.name": "node-a"})
EXTERNAL = external("203.0.113.9", 443)
# (record, subject token of source, of destination), as the enricher publishes them
NON_POD = [
    (flow(HOST, EXTERNAL), subjects.HOST_TOKEN, subjects.EXTERNAL_TOKEN),
    (flow(NODE, PG), subjects.NODE_TOKEN, "db"),
    (flow(CART, PG), "shop", "db"),
    (flow(CART, EXTERNAL), "shop", subjects.EXTERNAL_TOKEN),
]
RESERVED_CASES = {
    subjects.HOST_TOKEN: (HOST, [0]),
    subjects.EXTERNAL_TOKEN: (EXTERNAL, [0, 3]),
    subjects.NODE_TOKEN: (NODE, [1]),
}


@pytest.mark.parametrize("token", RESERVED_CASES)
async def test_namespace_filter_with_a_reserved_token_shows_its_endpoints(
    nats_srv: NatsServer, nc: Any, token: str
) -> None:
    """Regression: ``--namespace _host`` subscribed to the ``_host`` subjects, then
    dropped every record there because such endpoints have no namespace key."""
    endpoint, expected = RESERVED_CASES[token]
    async with observe(nats_srv, "-o", "json", "--namespace", token) as obs:
        for record, src, dst in NON_POD:
            b = flows.batch(record)
            await nc.publish(subjects.flows(src, dst), b.body, headers=b.headers)
        # One sentinel per subscription (``token.*``, ``*.token``), each FIFO.
        sentinel_a = flow(endpoint, pod("zz", "sentinel-a", "10.9.9.8", 1))
        sentinel_b = flow(pod("zz", "sentinel-b", "10.9.9.9", 2), endpoint)
        for record, subject in ((sentinel_a, f"{token}.zz"), (sentinel_b, f"zz.{token}")):
            b = flows.batch(record)
            await nc.publish(f"{subjects.FLOWS}.{subject}", b.body, headers=b.headers)
        await messaging.flush(nc)
        lines = await obs.until("sentinel")
        lines += await obs.until("sentinel")
        assert await obs.interrupt() == 0
    shown = [orjson.loads(line) for line in lines if "sentinel" not in line]
    assert sorted(shown, key=orjson.dumps) == sorted(
        (NON_POD[i][0] for i in expected), key=orjson.dumps
    )


async def test_bad_messages_are_skipped_with_one_warning(nats_srv: NatsServer, nc: Any) -> None:
    subject = subjects.flows("shop", "db")
    good = flow(CART, PG)
    missing_key = {k: v for k, v in good.items() if k != "source.port"}
    async with observe(nats_srv, "-o", "json") as obs:
        for _ in range(20):
            await nc.publish(subject, b"{not json\n", headers={codec.SCHEMA_HEADER: "flow/1"})
        await nc.publish(subject, b"", headers={codec.SCHEMA_HEADER: "flow/99"})
        bad = codec.encode(codec.FLOW, [missing_key, good])
        await nc.publish(subject, bad.body, headers=bad.headers)
        got = [orjson.loads(line) for line in await obs.lines(1)]
        assert obs.proc.returncode is None
        assert await obs.interrupt() == 0
    assert got == [good]
    stderr = "".join(obs.stderr)
    assert stderr.count("skipped a message") == 1, stderr  # rate-limited, not 21 lines
    assert "malformed" in stderr
    assert "skipped a record" in stderr and "source.port" in stderr


def _read_pty(fd: int, marker: bytes) -> bytes:
    """Read a pseudo-terminal until ``marker`` arrives (or the timeout passes)."""
    data = b""
    while marker not in data:
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("1", False)])
async def test_colour_only_on_a_terminal_without_no_color(
    nats_srv: NatsServer, nc: Any, no_color: str | None, coloured: bool
) -> None:
    master, slave = pty.openpty()
    env = _env() if no_color is None else _env(NO_COLOR=no_color)
    proc = await asyncio.create_subprocess_exec(
        FLOWSCOPE, "observe", "--nats-url", nats_srv.url, "--pod", "tty-*",
        stdout=slave, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(slave)
    observer = Observer(proc)
    try:
        await observer.ready()
        await publish(nc, flow(pod("shop", "tty-1", "10.0.0.1", 1000), PG))
        out = await asyncio.to_thread(_read_pty, master, b"node-a")
        assert await observer.interrupt() == 0
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"shop/tty-1:1000" in out
    assert (b"\x1b[" in out) is coloured


async def test_a_closed_pipe_ends_observe_without_another_flow(
    nats_srv: NatsServer, nc: Any
) -> None:
    """Regression: after ``| head -n 1`` exited, observe noticed the closed pipe only at
    its next write — on an idle pipeline it kept running until another flow came."""
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        FLOWSCOPE, "observe", "--nats-url", nats_srv.url, "--pod", "head-*",
        stdout=write_end, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    os.close(write_end)
    observer = Observer(proc)
    try:
        await observer.ready()
        await publish(nc, flow(pod("shop", "head-1", "10.0.0.1", 1000), PG))
        with os.fdopen(read_end, "rb") as reader:  # `head -n 1`: one line, then gone
            first = await asyncio.wait_for(asyncio.to_thread(reader.readline), TIMEOUT)
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        assert observer._stderr_task is not None
        await asyncio.wait_for(observer._stderr_task, TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = "".join(observer.stderr)
    assert b"shop/head-1:1000" in first
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


async def test_ctrl_c_after_the_server_went_away_exits_cleanly() -> None:
    """NATS stops under a running observe, then Ctrl-C: status 0 and no traceback."""
    server = nats_server.start()
    try:
        async with observe(server) as watcher:
            server.stop()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while not any("NATS disconnected" in line for line in watcher.stderr):
                assert asyncio.get_running_loop().time() < deadline, "".join(watcher.stderr)
                await asyncio.sleep(0.05)
            code = await watcher.interrupt()
    finally:
        server.close()
    stderr = "".join(watcher.stderr)
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


async def test_exits_with_the_reason_when_nats_closes_the_connection_for_good(
    tmp_path: Path,
) -> None:
    """The server's users change (a reload): nats-py closes the client for good on the
    ``Authorization Violation``. observe says so in one line and exits 1 instead of
    waiting for flows that can no longer come."""
    conf = tmp_path / "nats.conf"
    conf.write_text("authorization { users = [ {user: flow, password: one} ] }\n")
    server = nats_server.start(store_dir=str(tmp_path / "js"), extra=["-c", str(conf)])
    try:
        proc = await asyncio.create_subprocess_exec(
            FLOWSCOPE, "observe", "--nats-url", server.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_env(FLOWSCOPE_NATS_USER="flow", FLOWSCOPE_NATS_PASSWORD="one"),
        )  # fmt: skip
        watcher = Observer(proc)
        await watcher.ready()
        conf.write_text("authorization { users = [ {user: flow, password: two} ] }\n")
        server.process.send_signal(signal.SIGHUP)  # nats-server reloads its configuration
        code = await asyncio.wait_for(proc.wait(), TIMEOUT)
        assert watcher._stderr_task is not None
        await asyncio.wait_for(watcher._stderr_task, TIMEOUT)
    finally:
        server.close()
    stderr = "".join(watcher.stderr)
    assert code == 1, stderr
    assert "NATS connection lost for good: nats: authorization failed" in stderr, stderr
    assert "Traceback" not in stderr, stderr
