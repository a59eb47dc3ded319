"""Fail fast on cluster addresses nobody answers at: a TCP connect with a short timeout, before any
Ray call (Ray's own clients retry an unreachable address for a minute or more)."""
from __future__ import annotations

import socket
from typing import Optional
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 5.0
DEFAULT_PORTS = {"ray": 10001, "http": 80, "https": 443}


def host_port(address: str, default_port: int = 6379) -> Optional[tuple[str, int]]:
    """(host, port) of `host:port`, `ray://host:port` or `http://host:port`; None for `auto`/`local`,
    which Ray resolves itself."""
    address = address.strip()
    if address in ("auto", "local"):
        return None
    if "://" not in address:
        address = "tcp://" + address
    parsed = urlparse(address)
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or DEFAULT_PORTS.get(parsed.scheme, default_port)


def check_reachable(address: str, what: str, hint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ConnectionError naming `what` and `address` unless something accepts a TCP connection there."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise ConnectionError(f"{what}: cannot reach {address} ({reason}); {hint}") from None
