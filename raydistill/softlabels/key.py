"""The cache key: what the cached logits depend on, hashed.

Teacher weights (+ architecture, class ids and input normalisation), the training images and
labels, the augmentation bank (its parameters, its draws and what applying them gives) and the
storage format (with the KD temperature for topk). Any change gives a new key and so a new
cache directory; nothing stale is ever read.
"""
from __future__ import annotations

import hashlib
import json

import torch


def _update(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def teacher_fingerprint(teacher) -> str:
    """sha256 of a FrozenTeacher: arch, class ids, mean/std, every parameter and buffer, and its
    precision when it is not fp32 (bf16/fp16 forwards give other logits; fp32 keys are unchanged)."""
    h = hashlib.sha256()
    m = teacher.model
    described = [getattr(m, "arch", type(m).__name__), teacher.class_ids, list(teacher.mean), list(teacher.std)]
    precision = getattr(getattr(teacher, "amp", None), "name", "fp32")
    if precision != "fp32":
        described.append(precision)
    h.update(json.dumps(described).encode())
    for name, t in sorted(m.state_dict().items()):
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


def dataset_fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the training images and labels, in order (sample index = position)."""
    h = hashlib.sha256()
    _update(h, images)
    _update(h, labels.to(torch.int64))
    return h.hexdigest()


def bank_fingerprint(bank, images: torch.Tensor, probe: int = 8) -> str:
    """sha256 of the bank's draws themselves and of the augmented pixels of the first `probe`
    samples at every draw: a change in how draws are made or applied changes the key, even when
    the bank's parameters (samples, draws, padding, flip, seed) stay the same."""
    h = hashlib.sha256()
    _update(h, bank.draws)
    index = torch.arange(min(probe, len(images)))
    for a in range(bank.num_draws):
        _update(h, bank.apply(images[index], index, torch.full((len(index),), a, dtype=torch.long)))
    return h.hexdigest()


def cache_key(teachers: dict, dataset: str, bank: dict, storage: dict) -> tuple[str, dict]:
    """(hex key, components): teachers = {key: {"fingerprint", "classes"}}."""
    components = {"version": 2, "teachers": {k: teachers[k] for k in sorted(teachers)}, "dataset": dataset,
                  "bank": bank, "storage": storage}
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest(), components
