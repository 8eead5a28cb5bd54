"""Probing a service's HTTP endpoint from a test, by address family."""

from __future__ import annotations

import socket


def healthz(host: str, port: int) -> bool:
    """Whether GET /healthz answers 200 at (host, port): an IPv6 host (``::1``) over an
    IPv6 socket, an IPv4 one over IPv4 — what a kubelet probe of that pod IP does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect((host, port))
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return sock.recv(64).split(b" ")[1] == b"200"
    except OSError:
        return False
