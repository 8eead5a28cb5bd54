"""Benchmark: CPU of one start-up socket snapshot (``socket_snapshotting``).

Holds N loopback TCP connections open in this process (2 N sockets), then takes the
snapshot of the whole host 5 times and prints the median process CPU (user + system:
the kernel's formatting of /proc/net/tcp is part of the cost) for each N, with the
number of TIME_WAIT entries in the tables (other runs on the host leave them; they are
read but not parsed).

Run (as root, to read every process's fds): .venv/bin/python bench/socket_snapshot.py [N ...]
"""

from __future__ import annotations

import logging
import resource
import socket
import statistics
import sys
import time

import prometheus_client
from flowscope.collector.metrics import SocketSnapshotMetrics
from flowscope.collector.socket_snapshotting import SocketSnapshot

ROUNDS = 5


def time_wait_entries() -> int:
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/net/{table}") as lines:
            count += sum(1 for line in lines if line.split()[3] == "06")
    return count


def measure(connections: int) -> str:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    held = []
    for _ in range(connections):
        client = socket.create_connection(listener.getsockname())
        held += [client, listener.accept()[0]]
    snapshot = SocketSnapshot(
        "bench", SocketSnapshotMetrics.create(prometheus_client.CollectorRegistry())
    )
    cpu, records = [], 0
    for _ in range(ROUNDS):
        started = time.process_time()
        records = len(snapshot.take())
        cpu.append(time.process_time() - started)
    for sock in [*held, listener]:
        sock.close()
    runs = " ".join(f"{c * 1000:.0f}" for c in cpu)
    return (
        f"{connections:6d} connections held: {records:6d} records, "
        f"median {statistics.median(cpu) * 1000:6.1f} ms CPU ({runs}), "
        f"{time_wait_entries()} TIME_WAIT entries in the host's tables"
    )


def main() -> None:
    logging.disable(logging.INFO)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sizes = [int(n) for n in sys.argv[1:]] or [0, 1000, 9000]
    for n in sizes:
        print(measure(n), flush=True)


if __name__ == "__main__":
    main()
