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


# ---- a local directory every node must share ---------------------------------------------------

SHARED_CHECK_TIMEOUT_S = 300.0   # a node's first task starts a Python worker there: slow on a loaded node


def _read_marker(path: str) -> Optional[str]:
    """Runs on a node: the marker's text, None when this node does not see it."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def nodes_not_seeing(directory: str, nodes: list, timeout: float = SHARED_CHECK_TIMEOUT_S) -> list:
    """The nodes (`ray.nodes()` entries) whose processes cannot read a marker this process writes
    into the local `directory`: one task with no CPU pinned to each node reads it back. A cluster
    whose nodes do not share the directory otherwise trains until its first checkpoint, then
    fails there with a worker traceback."""
    import uuid
    from pathlib import Path
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    if not nodes:
        return []
    token = uuid.uuid4().hex
    marker = Path(directory) / f".raydistill-shared-{token}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_read_marker)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        seen = []
        for ref in refs:
            try:
                seen.append(ray.get(ref) if ref in ready else None)
            except Exception:   # the task could not run there: that node cannot be trusted with the run
                seen.append(None)
    finally:
        marker.unlink(missing_ok=True)
    return [n for n, text in zip(nodes, seen) if text != token]


def worker_nodes(use_gpu: bool = False) -> list:
    """Alive nodes that can hold Train workers (or tasks that write the run): any CPU, and a GPU
    when the workers need one."""
    import ray
    return [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0
            and (not use_gpu or n["Resources"].get("GPU", 0) > 0)]
