"""The engine's TeacherClient for cached soft labels: no teacher forward, a table lookup.

It carries the augmentation bank as its `replay`, so the engine augments sample i in epoch e
with draw `e mod A` and asks for the logits of exactly (sample i, draw, teacher).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from raydistill.softlabels.bank import AugmentationBank, bank_for
from raydistill.softlabels.store import SoftLabelCacheError


class CachedTeachers:
    def __init__(self, bank: AugmentationBank, labels: dict):
        self.replay = bank
        self.labels = labels            # {teacher key: TeacherLabels}

    def submit(self, key: str, images: torch.Tensor, index: Optional[torch.Tensor] = None,
               draw: Optional[torch.Tensor] = None) -> Any:
        if index is None or draw is None:
            raise SoftLabelCacheError("cached soft labels: submit needs the samples' `index` and `draw` "
                                      "(the engine passes them to clients that have a `replay`)")
        if key not in self.labels:
            raise SoftLabelCacheError(f"cached soft labels: no teacher {key!r} in the cache "
                                      f"(it holds {sorted(self.labels)})")
        return self.labels[key].logits(index, draw)

    def fetch(self, handle: Any) -> torch.Tensor:
        return handle


class ReplayOnly:
    """A client with the bank and no teachers, for a plan without teachers (`scratch`): under the
    cache it sees exactly the augmented images ED and KD see, so the baselines stay comparable."""

    def __init__(self, bank: AugmentationBank):
        self.replay = bank

    def submit(self, key: str, images: torch.Tensor, index: Optional[torch.Tensor] = None,
               draw: Optional[torch.Tensor] = None) -> Any:
        raise SoftLabelCacheError(f"replay without teachers: no logits for teacher {key!r}")

    def fetch(self, handle: Any) -> torch.Tensor:
        return handle


def teacherless_client(exp, train, client) -> Optional[ReplayOnly]:
    """The client of a plan without teachers: None (fresh augmentation) unless soft labels are
    cached; then the cache's bank (or the same bank, made here, when the run has no teachers)."""
    if exp.teachers.soft_labels != "cache":
        return None
    bank = getattr(client, "replay", None)
    if bank is None:
        bank = bank_for(exp, len(train))
    return ReplayOnly(bank)
