"""Traffic generators run inside a pod namespace (``ip netns exec <ns> python traffic.py``).

Each command prints one JSON line with what it did, so the test knows the ground truth
it generated (bytes sent and received, the ports used).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_server(addr: str, port: str, reply_bytes: str) -> None:
    """Accept one connection, read until EOF, answer with reply_bytes, close."""
    srv = socket.socket(_family(addr), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, int(port)))
    srv.listen(1)
    print(json.dumps({"listening": True}), flush=True)
    conn, peer = srv.accept()
    got = 0
    while chunk := conn.recv(65536):
        got += len(chunk)
    conn.sendall(b"r" * int(reply_bytes))
    conn.close()
    print(json.dumps({"received": got, "peer": list(peer[:2])}), flush=True)


def tcp_client(addr: str, port: str, send_bytes: str, parts: str = "1", pause: str = "0") -> None:
    """Connect, send send_bytes (in ``parts`` writes ``pause`` seconds apart: a connection
    that spans several drains), half-close, read the reply to EOF."""
    c = socket.socket(_family(addr), socket.SOCK_STREAM)
    c.connect((addr, int(port)))
    for _ in range(int(parts)):
        c.sendall(b"s" * (int(send_bytes) // int(parts)))
        time.sleep(float(pause))
    c.shutdown(socket.SHUT_WR)
    got = 0
    while chunk := c.recv(65536):
        got += len(chunk)
    sport = c.getsockname()[1]
    c.close()
    print(json.dumps({"received": got, "sport": sport}), flush=True)


def udp_echo(addr: str, port: str, count: str) -> None:
    """Answer count datagrams, each with the same payload."""
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    print(json.dumps({"listening": True}), flush=True)
    for _ in range(int(count)):
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)
    print(json.dumps({"echoed": int(count)}), flush=True)


def udp_client(addr: str, port: str, count: str, size: str, sport: str = "0") -> None:
    """Send count datagrams of size bytes from sport; wait for each echo."""
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.bind(("::" if ":" in addr else "0.0.0.0", int(sport)))
    s.settimeout(2)
    for _ in range(int(count)):
        s.sendto(b"u" * int(size), (addr, int(port)))
        s.recvfrom(65536)
    print(json.dumps({"sport": s.getsockname()[1]}), flush=True)


def udp_spray(addr: str, first_port: str, ports: str, sport: str = "0") -> None:
    """One datagram to each of `ports` consecutive ports (many flows, no replies needed),
    from source port `sport` (0: any), so that a second spray repeats the same flows."""
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if ":" in addr else "0.0.0.0", int(sport)))
    for port in range(int(first_port), int(first_port) + int(ports)):
        s.sendto(b"x" * 32, (addr, port))
    print(json.dumps({"sport": s.getsockname()[1]}), flush=True)


def dns_server(addr: str, port: str, count: str) -> None:
    """Answer count UDP queries: every A question gets 10.203.0.99 (TTL 60)."""
    from dnslib import QTYPE, RR, A, DNSRecord

    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    print(json.dumps({"listening": True}), flush=True)
    for _ in range(int(count)):
        data, peer = s.recvfrom(4096)
        query = DNSRecord.parse(data)
        reply = query.reply()
        if query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("10.203.0.99"), ttl=60))
        s.sendto(reply.pack(), peer)
    print(json.dumps({"answered": int(count)}), flush=True)


def dns_query(server: str, port: str, name: str) -> None:
    """One A query over UDP; prints the answer's address."""
    from dnslib import DNSRecord

    reply = DNSRecord.parse(DNSRecord.question(name, "A").send(server, int(port), timeout=2))
    print(json.dumps({"id": reply.header.id, "answer": str(reply.rr[0].rdata)}), flush=True)


def inject(ifname: str, *frames_hex: str) -> None:
    """Send raw Ethernet frames (hex) out of ifname: odd packets the stack would not build."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    for frame in frames_hex:
        s.send(bytes.fromhex(frame))
    print(json.dumps({"sent": len(frames_hex)}), flush=True)


def udp_repeat(addr: str, port: str, count: str) -> None:
    """count datagrams to one port as fast as possible (nobody answers)."""
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    for _ in range(int(count)):
        s.sendto(b"q" * 40, (addr, int(port)))
    print(json.dumps({"sport": s.getsockname()[1]}), flush=True)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(addr: str, count: str) -> None:
    """ICMP / ICMPv6 echo requests with 56-byte payloads; wait for each reply."""
    v6 = ":" in addr
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    s = socket.socket(_family(addr), socket.SOCK_RAW, proto)
    s.settimeout(2)
    ident = os.getpid() & 0xFFFF
    replies = 0
    for seq in range(int(count)):
        payload = b"p" * 56
        typ = 128 if v6 else 8
        header = struct.pack("!BBHHH", typ, 0, 0, ident, seq)
        csum = 0 if v6 else _checksum(header + payload)  # the kernel fills ICMPv6's
        s.sendto(struct.pack("!BBHHH", typ, 0, csum, ident, seq) + payload, (addr, 0))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            data = s.recv(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
                replies += 1
                break
    print(json.dumps({"replies": replies}), flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1].replace("-", "_")](*sys.argv[2:])
