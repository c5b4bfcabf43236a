"""Small helpers for picking local ports and waiting on them. Everything binds to 127.0.0.1 only."""

from __future__ import annotations

import collections
import os
import random
import socket
from pathlib import Path

import psutil

LOCALHOST = "127.0.0.1"


LISTEN_RANGE = (20000, 32767)
"""Where ``free_port`` looks first: below Linux's default ephemeral range (32768-60999), from which the kernel gives
every outgoing connection its local port. A port the kernel picked with bind(0) comes from that range, so between
the pick and the server's bind an outgoing connection (a test run makes thousands) could take it: a make test run
lost an API copy to "address already in use" so."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: collections.deque[int] = collections.deque(maxlen=1024)
"""The ports this process gave lately: a stack picks all of its ports before its servers bind them."""


def _share() -> tuple[int, int]:
    """(index, count) of this test worker among pytest-xdist's (set in the environment of its servers too): each
    worker takes only the ports ``index`` modulo ``count``, so two workers never pick the same port between a pick
    and its bind (seen: an API copy lost "address already in use" to another worker's server). (0, 1) otherwise."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        return int(worker[2:]) % int(count), int(count)
    return 0, 1


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that was free a moment ago, and not given by this process lately: a random one of
    ``LISTEN_RANGE`` outside the kernel's ephemeral range (this test worker's share of it), else one the kernel picks
    (bind to port 0)."""
    low, high = _ephemeral_range()
    index, count = _share()
    candidates = [p for p in range(LISTEN_RANGE[0], LISTEN_RANGE[1] + 1)
                  if not low <= p <= high and p % count == index and p not in _handed_out]
    for port in random.sample(candidates, min(20, len(candidates))):
        if port_is_free(port, host):
            _handed_out.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when a server could listen on host:port now.

    Tested the way our servers bind (aiohttp, nats-server and PostgreSQL all set SO_REUSEADDR): a previous run's
    connections in TIME_WAIT do not stop them, so they must not make the port look taken; a listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port``: "pid 123 (nats-server)", "another user's process", or None when nobody."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return "another user's process"
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def preferred_port(port: int, host: str = LOCALHOST) -> tuple[int, str | None]:
    """``(port, None)`` when `port` is free; otherwise a free port chosen by the kernel and why `port` was not
    taken ("9511 is in use by pid 123 (python3)"), for the caller's table and log."""
    if port_is_free(port, host):
        return port, None
    holder = port_holder(port)
    return free_port(host), f"{port} is in use by {holder or 'a process this user cannot see'}"


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
