"""The augmentation bank: A fixed (crop offset, flip) draws per training sample, made from a seed.

Teachers are frozen, so their logits for a fixed set of augmented images can be computed once.
The bank fixes those images: sample i, draw a is `crop_flip(image_i, draws[i, a])`. The cache
builder and the student both apply it through `apply`, so the student sees exactly the pixels the
teacher saw. Epochs cycle through the bank: sample i uses draw `epoch mod A` in global epoch
`epoch` (the draws themselves are independent per sample, so each sample still sees a random
sequence of crops; after A epochs the sequence repeats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from raydistill.data import crop_flip

BANK_STREAM = 0x5AFE  # mixed into the seed so the bank does not reuse another generator's stream


@dataclass(frozen=True)
class AugmentationBank:
    draws: torch.Tensor         # int8 [N, A, 3]: dy, dx in 0..2*padding, flip in {0, 1}
    padding: int
    flip: bool
    seed: int

    @classmethod
    def make(cls, num_samples: int, num_draws: int, padding: int = 4, flip: bool = True,
             seed: int = 0) -> "AugmentationBank":
        """Draws for `num_samples` samples; the same arguments always give the same bank."""
        if not 0 <= padding <= 63:
            raise ValueError(f"augmentation bank: padding must be in 0..63 (int8 offsets), got {padding}")
        if num_draws < 1:
            raise ValueError(f"augmentation bank: expected at least 1 draw per sample, got {num_draws}")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + BANK_STREAM)
        offsets = torch.randint(0, 2 * padding + 1, (num_samples, num_draws, 2), generator=g)
        flips = torch.rand(num_samples, num_draws, generator=g) < 0.5 if flip \
            else torch.zeros(num_samples, num_draws, dtype=torch.bool)
        draws = torch.cat([offsets, flips[..., None].long()], dim=2).to(torch.int8)
        return cls(draws, int(padding), bool(flip), int(seed))

    def __len__(self) -> int:
        return int(self.draws.shape[0])

    @property
    def num_draws(self) -> int:
        return int(self.draws.shape[1])

    def params(self) -> dict:
        """What determines the bank (it is regenerated from these, never stored)."""
        return {"samples": len(self), "draws": self.num_draws, "padding": self.padding, "flip": self.flip,
                "seed": self.seed}

    def draw_at(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Draw of each sample at `index` in global epoch `epoch`: epochs cycle through the bank."""
        return torch.full((len(index),), epoch % self.num_draws, dtype=torch.long)

    def apply(self, images: torch.Tensor, index: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """uint8 images of samples `index`, augmented with their draw `draw` (one per sample)."""
        d = self.draws[index, draw].long()
        return crop_flip(images, d[:, :2], d[:, 2].bool() if self.flip else None, self.padding)
