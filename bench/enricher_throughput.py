"""Enricher throughput and metadata memory (not a test: prints figures).

    .venv/bin/python bench/enricher_throughput.py [--batches 200] [--batch-size 1000]

Four figures, measured in the same run so that they can be compared:

1. **Ceiling**: the raw NATS batched publish → subscribe rate of the very raw batches
   the enricher will read (core NATS, one Python publisher, one Python subscriber
   counting records from the ``Flowscope-Count`` header) — what moving those bytes
   through NATS with nats-py costs at best. Five runs before the end-to-end passes and
   five after; the ratio is against the median of the ten.
2. **End to end**: ``flowscope enricher`` as a subprocess (one process = one core) with
   10,000 pods, 2,000 services, 100 nodes and their controllers from a fake Kubernetes
   API, and 50,000 DNS names learned from raw DNS events; raw flow batches published to
   JetStream; enriched records counted as they arrive on ``flowscope.flows.>``.
   Reported per core: records ÷ the enricher's CPU seconds (user + system, from
   /proc) over the run, and its wall-clock rate.
3. **Hot path in process** (decode → enrich → encode, no I/O), for the breakdown; also
   for a second workload where each flow is reported in 5 intervals (as the collector
   re-reports a flow every active timeout), which per-flow caches would see.
   ``--intervals 5`` runs the end-to-end figure on such a workload instead.
4. **Steady state**, in process and end to end: the next ``--batches`` batches, new
   connections (another seed) between the same pods, services and DNS names, after the
   first workload went through the same enricher — the first workload's figures include
   every address's first sighting (parsing it, building its identity: ~17,000 distinct
   addresses in 100,000 records), which a running enricher has behind it. In process
   it is printed for the compiled core and for the Python path.
5. **Hot path in process under metadata churn** (an additional figure; the ones above
   are unchanged): the all-distinct workload of 3. while the inventory receives, before
   every raw batch of 1,000 records, the updates a busy cluster sends — pod status
   updates (equal slim objects), pod label changes, EndpointSlices losing or regaining
   an address, ReplicaSet status updates (``CHURN``; printed). The updates are
   converted beforehand; applying them to the inventory is timed with the flows.
6. **The enricher per raw batch**, end to end and in the steady state (additional
   figures, from the same passes as 2. and 4.): its user and system CPU and its minor
   page faults (copies onto freshly mapped memory show up there), from /proc; and
   nats-server's CPU over the same pass (storing the raw and enriched messages,
   delivering them), which is what bounds the wall-clock rate here.

Metadata memory: tracemalloc of the inventory holding 10,000 pods (plus the services,
nodes and controllers), with every pod's identity cached as it is after traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
from flowscope.core import codec, subjects
from flowscope.enricher.enriching import Enricher, Observers
from flowscope.enricher.inventory import Inventory
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.publishing import gather_lines
from flowscope.enricher.watching import resources

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import nats_server
from tests.support.fake_kube import FakeKube
from tests.unit.enricher import cluster

PODS, SERVICES, NODES, NAMESPACES, DNS_NAMES = 10_000, 2_000, 100, 20, 50_000
RECURRING = 5  # the second workload: each flow reported in this many intervals
# Metadata updates applied before every raw batch (figure 4): pod status updates, pod
# label changes, EndpointSlice address changes, ReplicaSet status updates.
CHURN = {"pod_status": 8, "pod_labels": 2, "slice_addresses": 2, "replicaset_status": 2}
LABELS = ("app", "app.kubernetes.io/name", "app.kubernetes.io/instance", "version")


def pod_json(i: int, version: str = "v1") -> dict[str, Any]:
    d = i // 5
    ns = f"ns-{d % NAMESPACES}"
    return cluster.pod(
        f"app-{d}-5d-{i}", ns, ips=(pod_ip(i),), node=f"node-{i % NODES}",
        owner=("ReplicaSet", f"app-{d}-5d"), containers=("main", "sidecar"),
        container_ids={f"c{i:060d}": "main"}, labels={"app": f"app-{d}", "version": version},
    )  # fmt: skip


def slice_json(s: int, pods: int = 5) -> dict[str, Any]:
    ns = f"ns-{s % NAMESPACES}"
    addresses = tuple(pod_ip(s * 5 + k) for k in range(pods))
    return cluster.endpointslice(f"app-{s}-x", f"app-{s}", addresses, ns)


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"


def service_ip(i: int) -> str:
    return f"10.96.{i // 256}.{i % 256}"


def external_ip(i: int) -> str:
    return f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"


def cluster_objects() -> list[tuple[str, dict[str, Any]]]:
    """(resource, JSON object) for the whole benchmark cluster."""
    out: list[tuple[str, dict[str, Any]]] = []
    for n in range(NODES):
        out.append(("nodes", cluster.node(f"node-{n}", f"192.168.{n // 256}.{n % 256}")))
    for d in range(PODS // 5):
        ns = f"ns-{d % NAMESPACES}"
        out.append(("deployments", cluster.workload("Deployment", f"app-{d}", ns)))
        out.append(("replicasets", cluster.workload("ReplicaSet", f"app-{d}-5d", ns,
                                                     owner=("Deployment", f"app-{d}"))))  # fmt: skip
    for i in range(PODS):
        out.append(("pods", pod_json(i)))
    for s in range(SERVICES):
        ns = f"ns-{s % NAMESPACES}"
        out.append(("services", cluster.service(f"app-{s}", ns, cluster_ips=(service_ip(s),))))
        out.append(("endpointslices", slice_json(s)))
    return out


def churn_updates(batches: int, seed: int = 2) -> list[list[tuple[str, Any]]]:
    """Per raw batch, the converted metadata updates (``CHURN``) applied before it.

    Status updates convert to objects equal to the stored ones; a label change flips a
    pod's ``version`` label (and back, the next time it is picked); a slice update
    drops its last address, or restores it.
    """
    converters = {r.name: r.convert for r in resources(LABELS)}
    rnd = random.Random(seed)
    labelled: set[int] = set()
    shrunk: set[int] = set()
    out = []
    for _ in range(batches):
        updates: list[tuple[str, Any]] = []
        for _ in range(CHURN["pod_status"]):
            i = rnd.randrange(PODS)
            updates.append(("pods", pod_json(i, "v2" if i in labelled else "v1")))
        for _ in range(CHURN["pod_labels"]):
            i = rnd.randrange(PODS)
            labelled ^= {i}
            updates.append(("pods", pod_json(i, "v2" if i in labelled else "v1")))
        for _ in range(CHURN["slice_addresses"]):
            s = rnd.randrange(SERVICES)
            shrunk ^= {s}
            updates.append(("endpointslices", slice_json(s, 4 if s in shrunk else 5)))
        for _ in range(CHURN["replicaset_status"]):
            d = rnd.randrange(PODS // 5)
            rs = cluster.workload("ReplicaSet", f"app-{d}-5d", f"ns-{d % NAMESPACES}",
                                  owner=("Deployment", f"app-{d}"))  # fmt: skip
            updates.append(("replicasets", rs))
        out.append([(resource, converters[resource](obj)) for resource, obj in updates])
    return out


def raw_batches(batches: int, size: int, seed: int = 1, intervals: int = 1) -> list[codec.Batch]:
    """Raw flow batches: pod → service 40 %, pod → pod 30 %, pod → named external 30 %.

    ``intervals`` 1: every record a distinct 5-tuple. ``intervals`` k: the same flows
    reported k times, as the collector does every active timeout — the first
    ``batches / k`` batches, then again with timestamps 10 s later, k times over.
    """
    if batches % intervals:
        raise ValueError("batches must be a multiple of intervals")
    rnd = random.Random(seed)
    flows = []
    for b in range(batches // intervals):
        recs = []
        for i in range(size):
            src = rnd.randrange(PODS)
            kind = rnd.random()
            if kind < 0.4:
                dst, dport = service_ip(rnd.randrange(SERVICES)), 80
            elif kind < 0.7:
                dst, dport = pod_ip(rnd.randrange(PODS)), 8080
            else:  # from one of the 10 clients that resolved this name
                n = rnd.randrange(DNS_NAMES // 10)
                src = (n * 10 + rnd.randrange(10)) % PODS
                dst, dport = external_ip(n), 443
            recs.append({
                "observer": f"node-{src % NODES}", "start_ns": 1_700_000_000_000_000_000 + b,
                "end_ns": 1_700_000_010_000_000_000 + b, "end_reason": "active_timeout",
                "proto": 6, "src": pod_ip(src), "dst": dst, "sport": 10_000 + (b * size + i) % 50_000,
                "dport": dport, "bytes": 1500 * i, "packets": i + 1, "rbytes": 900 * i,
                "rpackets": i, "tcp_flags": 0x1B, "initiator": True,
            })  # fmt: skip
        flows.append(recs)
    shift = 10_000_000_000  # ns: one active timeout
    return [
        codec.encode(codec.RAW_FLOW, [
            {**r, "start_ns": r["start_ns"] + k * shift, "end_ns": r["end_ns"] + k * shift}
            for r in recs
        ] if k else recs)
        for k in range(intervals)
        for recs in flows
    ]  # fmt: skip


def dns_events() -> list[dict[str, Any]]:
    """50,000 (client, address) → name entries: 5,000 external addresses x 10 clients."""
    events = []
    for n in range(DNS_NAMES // 10):
        for c in range(10):
            client = pod_ip((n * 10 + c) % PODS)
            events.append({
                "observer": "node-0", "time_ns": 1, "id": n % 65536, "qname": f"svc-{n}.example.com",
                "qtype": "A", "rcode": "NOERROR", "client": client, "client_port": 5353,
                "server": service_ip(0), "server_port": 53,
                "answers": [{"name": f"svc-{n}.example.com", "type": "A", "ttl": 3600,
                             "data": external_ip(n)}],
            })  # fmt: skip
    return events


# ---------------------------------------------------------------- memory


def metadata_memory() -> tuple[float, float]:
    """MB held by the inventory for the benchmark cluster: (objects, objects + caches)."""
    objs = cluster_objects()
    converters = {r.name: r.convert for r in resources(LABELS)}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    inventory = Inventory(60)
    for resource, obj in objs:
        inventory.upsert(resource, converters[resource](obj))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    for i in range(PODS):
        inventory.resolve(pod_ip(i))
    for s in range(SERVICES):
        inventory.resolve(service_ip(s))
    gc.collect()
    with_cache = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / 1e6, with_cache / 1e6


# ---------------------------------------------------------------- in process


def loaded_enricher(native: bool = True, cold: bool = False) -> tuple[Enricher, Inventory]:
    """An enricher (and its inventory) over the benchmark cluster, its DNS names learned,
    every identity built ahead as the running enricher builds them once synced (not
    ``cold``); ``native``: with the compiled core."""
    converters = {r.name: r.convert for r in resources(LABELS)}
    inventory = Inventory(60)
    for resource, obj in cluster_objects():
        inventory.upsert(resource, converters[resource](obj))
    names = NameCache(60, 3600, 200_000)
    enricher = Enricher(inventory, SocketTable(200_000, 30), names, Observers(300), native=native)
    if not cold:
        enricher.learn_addresses(inventory.warm(1 << 30))
    enricher.learn_dns(dns_events())
    return enricher, inventory


def in_process(
    batches: list[codec.Batch],
    lines: bool = True,
    native: bool = True,
    warm: list[codec.Batch] | None = None,
    churn: list[list[tuple[str, Any]]] | None = None,
    cold: bool = False,
) -> tuple[float, int]:
    """(raw records/s of decode → enrich → encode on this core, records out); no I/O.

    ``lines``: records rendered straight to NDJSON lines and, as the pipeline publishes
    them, framed as one atomic batch's HPUB commands (``publishing.gather_lines``: the
    heads written, the lines gathered where they are, for ``sendmsg`` to copy — I/O,
    not timed here; the Python path's lines chunked by ``codec.chunk_lines``), else
    built as wire dicts and encoded by orjson (the dict path, for comparison).
    ``native``: the compiled flow core (lines path only), else the Python path.
    ``warm``: batches enriched first, untimed (the steady state: addresses, identities
    and names already seen).
    ``churn``: metadata updates upserted into the inventory before each batch, and the
    identities they left cold built again, as the enricher's warming task does (timed).
    ``cold``: no identity built ahead and no address taken in (as the enricher does
    once synced): each address's first record does both.
    """
    enricher, inventory = loaded_enricher(native, cold)
    for batch in warm or ():
        enricher.flow_batch(batch.headers, batch.body)
    records = raw_records = 0
    # What an earlier phase left (its enricher, in cycles) collected, and what this one
    # set up frozen, as the enricher freezes its state after the first LISTs: otherwise
    # the automatic collections walk it all, and each phase pays for the ones before.
    gc.collect()
    gc.freeze()
    start = time.process_time()
    for n, batch in enumerate(batches):
        if churn:
            for resource, obj in churn[n]:
                inventory.upsert(resource, obj)
            enricher.learn_addresses(inventory.warm(1 << 30))
        raw_records += batch.count
        if lines:  # as the pipeline does: the compiled core reads the body itself
            out = enricher.flow_batch(batch.headers, batch.body)
            framed = None
            if out.rendered is not None:  # framed as one atomic batch, as published
                framed = gather_lines(out.rendered, codec.FLOW.header, "bench:1:", "done", "b1",
                                      "_INBOX.bench.1", 1 << 20)  # fmt: skip
            if framed is not None:
                records += out.rendered.count
                continue
            chunks = [
                chunk
                for subject_lines in out.lines.values()
                for chunk in codec.chunk_lines(codec.FLOW, subject_lines, 1 << 20)
            ]
        else:
            raw = codec.decode(codec.RAW_FLOW, batch.headers, batch.body)
            chunks = [
                chunk
                for recs in enricher.flows(raw).by_subject.values()
                for chunk in codec.encode_chunks(codec.FLOW, recs, 1 << 20)
            ]
        records += sum(chunk.count for chunk in chunks)
    rate = raw_records / (time.process_time() - start)
    gc.unfreeze()
    return rate, records


# ---------------------------------------------------------------- over NATS


async def ceiling(url: str, batches: list[codec.Batch], runs: int = 5) -> list[float]:
    """Records/s of the raw batches through core NATS, publisher → subscriber, measured
    ``runs`` times (one run is ~50 ms: one measurement reads anywhere from 1.2 to 2.6 M/s)."""
    pub, sub_nc = await nats.connect(url), await nats.connect(url)
    total = sum(b.count for b in batches)
    got = 0
    done = asyncio.Event()

    async def on_message(msg: Any) -> None:
        nonlocal got
        got += int(msg.headers[codec.COUNT_HEADER])
        if got >= total:
            done.set()

    await sub_nc.subscribe("bench.ceiling", cb=on_message, pending_bytes_limit=1 << 30)
    await sub_nc.flush()
    rates = []
    for _ in range(runs):
        got = 0
        done.clear()
        start = time.perf_counter()
        for b in batches:
            await pub.publish("bench.ceiling", b.body, headers=b.headers)
        await pub.flush()
        await asyncio.wait_for(done.wait(), 120)
        rates.append(total / (time.perf_counter() - start))
    await pub.close()
    await sub_nc.close()
    return rates


def process_counters(pid: int) -> tuple[float, float, int]:
    """(user CPU seconds, system CPU seconds, minor page faults) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def wait_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    """Until the service process ``proc`` answers 200 on /readyz at ``port``."""
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def dns_done(js: Any) -> None:
    """Wait until the shared DNS consumer has handled every raw DNS batch."""
    while True:
        await asyncio.sleep(0.5)
        info = await js.consumer_info(subjects.STREAM_RAW, "enricher-dns")
        if not info.num_pending and not info.num_ack_pending:
            await asyncio.sleep(1)  # the state feed's copy, too
            return


@dataclass(frozen=True, slots=True)
class Pass:
    """Raw batches published to one enricher process, timed on their own."""

    batches: list[codec.Batch]
    expected: int  # enriched records out


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one :class:`Pass` measured of the enricher process."""

    per_core: float  # raw records per enricher CPU second (user + system)
    wall: float  # raw records per wall-clock second
    got: int  # enriched records that arrived
    user: float  # enricher CPU seconds in user space
    system: float  # … in the kernel
    faults: int  # minor page faults of the enricher
    server: float  # nats-server CPU seconds (user + system): storing, delivering


async def end_to_end(
    url: str, server_pid: int, passes: list[Pass], workdir: Path, profile: str = ""
) -> list[PassResult]:
    """Per pass, in order, into the same enricher process: its rates and counters, and
    the CPU of the nats-server process ``server_pid`` over the pass."""
    fake = FakeKube()
    await fake.start()
    for resource, obj in cluster_objects():
        fake.add(resource, obj)
    kubeconfig = fake.write_kubeconfig(workdir / "kubeconfig")
    nc = await nats.connect(url)
    js = nc.jetstream()
    http_port = 19_000 + os.getpid() % 10_000
    env = {**os.environ, "FLOWSCOPE_NATS_URL": url, "FLOWSCOPE_KUBECONFIG": str(kubeconfig),
           "FLOWSCOPE_KUBERNETES_MODE": "kubernetes", "FLOWSCOPE_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
           "FLOWSCOPE_JOIN_MERGE_WINDOW": "0.2", "FLOWSCOPE_LOG_LEVEL": "warning",
           "FLOWSCOPE_KUBERNETES_PAGE_SIZE": "1000"}  # fmt: skip
    wrap = ["-m", "cProfile", "-o", profile] if profile else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *wrap, "-m", "flowscope.cli", "enricher", env=env
    )
    try:
        await wait_ready(http_port, proc)
        rss_ready = rss_mb(proc.pid)
        events = dns_events()
        for i in range(0, len(events), 500):
            b = codec.encode(codec.RAW_DNS, events[i : i + 500])
            await js.publish(subjects.raw_dns("node-0"), b.body, headers=b.headers)
        got = 0
        last = time.perf_counter()

        async def on_message(msg: Any) -> None:
            nonlocal got, last
            got += int(msg.headers[codec.COUNT_HEADER])
            last = time.perf_counter()

        await dns_done(js)  # learned (state feed) and published as DNS records: not timed
        rss_dns = rss_mb(proc.pid)
        await nc.subscribe(subjects.FLOWS_ALL, cb=on_message, pending_bytes_limit=1 << 30)
        results = []
        for one in passes:
            got = 0
            total = sum(b.count for b in one.batches)
            (user0, system0, faults0), wall0 = process_counters(proc.pid), time.perf_counter()
            server0 = sum(process_counters(server_pid)[:2])
            last = wall0  # the silence timeout counts from the first raw batch
            for b in one.batches:
                await js.publish(subjects.raw_flows("node-0"), b.body, headers=b.headers)
            # Done when every expected record is out, or nothing came for 5 s (reported).
            while got < one.expected and time.perf_counter() - last < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            user, system, faults = process_counters(proc.pid)
            user, system, faults = user - user0, system - system0, faults - faults0
            server = sum(process_counters(server_pid)[:2]) - server0
            cpu, wall = user + system, last - wall0
            results.append(PassResult(total / cpu, total / wall, got, user, system, faults, server))
        print(f"enricher process resident memory: {rss_ready:.0f} MB synced, {rss_dns:.0f} MB "
              f"with the DNS names, {rss_mb(proc.pid):.0f} MB after the flows")  # fmt: skip
        return results
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        await nc.close()
        await fake.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--profile", default="", help="cProfile output of the enricher process")
    parser.add_argument(
        "--intervals", type=int, default=1,
        help="end to end: each flow reported this many times (1: all distinct 5-tuples)",
    )  # fmt: skip
    args = parser.parse_args()
    batches = raw_batches(args.batches, args.batch_size)
    recurring = raw_batches(args.batches, args.batch_size, intervals=RECURRING)
    records = args.batches * args.batch_size
    print(f"cluster: {PODS} pods, {SERVICES} services, {NODES} nodes, {DNS_NAMES} DNS names; "
          f"{records} raw flow records in {args.batches} batches")  # fmt: skip
    held, with_cache = metadata_memory()
    print(f"metadata memory: {held:.1f} MB (objects + indexes), {with_cache:.1f} MB with "
          f"every pod and service identity cached  [target < 150 MB]")  # fmt: skip
    dict_path, _ = in_process(batches, lines=False)
    hot, expected = in_process(batches)
    print(f"hot path in process (decode → enrich → encode): {hot:,.0f} raw records/s; "
          f"{expected} enriched out (the rest: cross-node duplicates dropped); "
          f"records built as dicts and encoded by orjson instead: {dict_path:,.0f}")  # fmt: skip
    hot_cold, _ = in_process(batches, cold=True)
    print(f"hot path in process, all distinct, no identity built ahead (each address's "
          f"first record builds it): {hot_cold:,.0f} raw records/s")  # fmt: skip
    hot_recurring, _ = in_process(recurring)
    print(f"hot path in process, each flow reported {RECURRING} times instead of all distinct: "
          f"{hot_recurring:,.0f} raw records/s")  # fmt: skip
    # The steady state: the same pods, services and names, new connections (another
    # seed), after the first workload was enriched once (untimed).
    steady = raw_batches(args.batches, args.batch_size, seed=2)
    warm, steady_expected = in_process(steady, warm=batches)
    warm_python, _ = in_process(steady, native=False, warm=batches)
    print(f"hot path in process, steady state (new connections after the first {records} "
          f"records): {warm:,.0f} raw records/s; the Python path instead of the compiled "
          f"core: {warm_python:,.0f}")  # fmt: skip
    hot_churn, _ = in_process(batches, churn=churn_updates(args.batches))
    rates = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in CHURN.items())
    print(f"hot path in process, all distinct, under metadata churn ({rates} upserts before "
          f"every raw batch of {args.batch_size}): {hot_churn:,.0f} raw records/s")  # fmt: skip
    if args.intervals != 1:
        batches = raw_batches(args.batches, args.batch_size, intervals=args.intervals)
        expected = in_process(batches)[1]
        print(f"end to end below: each flow reported {args.intervals} times")
    server = nats_server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # measured before and after the end-to-end passes, so that the ratio's
            # baseline spans the minutes they ran in (other tenants' load moves it)
            before = await ceiling(server.url, batches)
            first, then = await end_to_end(
                server.url,
                server.process.pid,
                [Pass(batches, expected), Pass(steady, steady_expected)],
                Path(tmp),
                args.profile,
            )
            after = await ceiling(server.url, batches)
    finally:
        server.close()
    roofs = before + after
    roof = statistics.median(roofs)
    print(f"ceiling, raw NATS batched publish → subscribe: {roof:,.0f} records/s (median of "
          f"{len(roofs)}: {min(roofs):,.0f} to {max(roofs):,.0f}; {len(before)} before the "
          f"end-to-end passes, median {statistics.median(before):,.0f}, {len(after)} after, "
          f"median {statistics.median(after):,.0f})")  # fmt: skip
    per_core, wall, got = first.per_core, first.wall, first.got
    steady_core, steady_wall, steady_got = then.per_core, then.wall, then.got
    print(f"end to end: {got} of {expected} enriched records arrived")
    print(f"end to end (raw in over NATS → enriched out): {per_core:,.0f} records/s per enricher "
          f"core (CPU time); {wall:,.0f} records/s wall clock  [target ≥ 200,000 per core]")  # fmt: skip
    print(f"ratio per core / ceiling: {per_core / roof:.0%}  [target ≥ 25%]")
    print(f"end to end, steady state (the next {records} records, new connections, same "
          f"process): {steady_core:,.0f} records/s per enricher core (CPU time); "
          f"{steady_wall:,.0f} wall clock; {steady_got} of {steady_expected} arrived; "
          f"ratio {steady_core / roof:.0%}")  # fmt: skip
    for name, one in (("end to end", first), ("steady state", then)):
        print(f"{name}, the enricher per raw batch of {args.batch_size}: "
              f"{one.user / args.batches * 1e3:.2f} ms user + "
              f"{one.system / args.batches * 1e3:.2f} ms system CPU, "
              f"{one.faults / args.batches:.0f} minor page faults; nats-server "
              f"{one.server / args.batches * 1e3:.2f} ms CPU")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
