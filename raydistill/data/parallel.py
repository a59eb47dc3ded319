"""Decode many images at once: Ray tasks when Ray is up (spread over the cluster's CPUs), else a
thread pool (torchvision's decoders and resize run in C++ without the GIL, so threads scale).

Inside a placement group (a Tune trial, a Ray Train worker) the thread pool is used too: tasks
would be captured by the group, whose bundles are sized for the trial or worker itself (a Tune
trial's driver bundle holds 0.01 CPU, so a 1-CPU task cannot be placed), and tasks outside it
would wait for CPUs the group's own workers hold."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

CHUNKS_PER_CPU = 4   # small enough chunks that a slow one does not leave the other CPUs idle


def _decode_chunk(items: Sequence, wheres: Sequence[str], decode: Callable) -> np.ndarray:
    """uint8 [n,3,H,W]; an item is the encoded bytes or a Path to read them from."""
    out = [decode(item.read_bytes() if isinstance(item, Path) else item, where).numpy()
           for item, where in zip(items, wheres)]
    return np.stack(out)


def _chunks(n: int, parts: int) -> list[slice]:
    parts = max(1, min(n, parts))
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def decode_many(items: Sequence, wheres: Sequence[str], decode: Callable, empty_shape: tuple) -> torch.Tensor:
    """Decode `items` (bytes or Paths; `wheres` name each one in errors) with `decode(bytes, where)`
    in parallel, in order. `empty_shape` ([3,H,W]) shapes the result when there are no items."""
    if len(items) == 0:
        return torch.zeros(0, *empty_shape, dtype=torch.uint8)
    try:
        import ray
        ray_up = ray.is_initialized() and ray.get_runtime_context().get_placement_group_id() is None
    except ImportError:
        ray_up = False
    if ray_up:
        cpus = int(ray.available_resources().get("CPU", 0)) or 1
        task = ray.remote(num_cpus=1)(_decode_chunk)
        refs = [task.remote(list(items[s]), list(wheres[s]), decode) for s in _chunks(len(items), cpus * CHUNKS_PER_CPU)]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            raise err.cause from None    # the DataError naming the file/row
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=cpus) as pool:
            parts = list(pool.map(lambda s: _decode_chunk(items[s], wheres[s], decode),
                                  _chunks(len(items), cpus * CHUNKS_PER_CPU)))
    return torch.from_numpy(np.concatenate(parts))
