"""The augmentation bank: A fixed augmentation draws per training sample, made from a seed.

Teachers are frozen, so their logits for a fixed set of augmented images can be computed once.
The bank fixes those images: sample i, draw a is `crop_flip(image_i, draws[i, a])` for the cifar
preset (draws: dy, dx, flip) and `resized_crop_flip(image_i, draws[i, a])` for the imagenet preset
(draws: top, left, height, width of the crop box in the decoded square, flip). The cache
builder and the student both apply it through `apply`, so the student sees exactly the pixels the
teacher saw. Epochs cycle through the bank: sample i uses draw `epoch mod A` in global epoch
`epoch` (the draws themselves are independent per sample, so each sample still sees a random
sequence of crops; after A epochs the sequence repeats).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from raydistill.data import crop_flip, resized_crop_flip
from raydistill.data.augment import resized_crop_params

BANK_STREAM = 0x5AFE  # mixed into the seed so the bank does not reuse another generator's stream


@dataclass(frozen=True)
class AugmentationBank:
    draws: torch.Tensor         # cifar: int8 [N, A, 3] dy, dx in 0..2*padding, flip; imagenet: int16 [N, A, 5]
    padding: int
    flip: bool
    seed: int
    preset: str = "cifar"       # cifar | imagenet
    size: int = 0               # imagenet: output side (data.image_size)
    source_size: int = 0        # imagenet: side of the decoded square the boxes lie in

    @classmethod
    def make(cls, num_samples: int, num_draws: int, padding: int = 4, flip: bool = True,
             seed: int = 0, preset: str = "cifar", size: int = 0, source_size: int = 0) -> "AugmentationBank":
        """Draws for `num_samples` samples; the same arguments always give the same bank."""
        if num_draws < 1:
            raise ValueError(f"augmentation bank: expected at least 1 draw per sample, got {num_draws}")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + BANK_STREAM)
        if preset == "imagenet":
            if not (size > 0 and 0 < source_size <= 32767):
                raise ValueError(f"augmentation bank: imagenet needs size > 0 and source_size in 1..32767, "
                                 f"got {size}, {source_size}")
            boxes = resized_crop_params(num_samples * num_draws, source_size, source_size, g)
            flips = torch.rand(num_samples * num_draws, generator=g) < 0.5 if flip \
                else torch.zeros(num_samples * num_draws, dtype=torch.bool)
            draws = torch.cat([boxes, flips[:, None].long()], dim=1).reshape(num_samples, num_draws, 5)
            return cls(draws.to(torch.int16), 0, bool(flip), int(seed), "imagenet", int(size), int(source_size))
        if not 0 <= padding <= 63:
            raise ValueError(f"augmentation bank: padding must be in 0..63 (int8 offsets), got {padding}")
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
        """What determines the bank (it is regenerated from these, never stored); the cifar preset's
        keys are those of the banks made before the imagenet preset existed, so their caches stay valid."""
        base = {"samples": len(self), "draws": self.num_draws, "padding": self.padding, "flip": self.flip,
                "seed": self.seed}
        if self.preset == "cifar":
            return base
        return {**base, "preset": self.preset, "size": self.size, "source_size": self.source_size}

    @classmethod
    def from_params(cls, p: dict) -> "AugmentationBank":
        """The bank `params()` describes (a cache's meta.json)."""
        return cls.make(p["samples"], p["draws"], p["padding"], p["flip"], p["seed"], p.get("preset", "cifar"),
                        p.get("size", 0), p.get("source_size", 0))

    def subset(self, samples: torch.Tensor) -> "AugmentationBank":
        """The draws of `samples` only (for building a piece of the cache)."""
        return dataclasses.replace(self, draws=self.draws[samples])

    def draw_at(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Draw of each sample at `index` in global epoch `epoch`: epochs cycle through the bank."""
        return torch.full((len(index),), epoch % self.num_draws, dtype=torch.long)

    def apply(self, images: torch.Tensor, index: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """uint8 images of samples `index`, augmented with their draw `draw` (one per sample)."""
        d = self.draws[index, draw].long()
        if self.preset == "imagenet":
            return resized_crop_flip(images, d[:, :4], d[:, 4].bool() if self.flip else None, self.size)
        return crop_flip(images, d[:, :2], d[:, 2].bool() if self.flip else None, self.padding)


def bank_for(exp, num_samples: int) -> AugmentationBank:
    """The bank of an experiment: `teachers.cache_draws` draws of the preset's crop + flip per sample
    (cifar: pad-4 crops; imagenet: random-resized crops of the decoded square), seeded by `data.seed`
    (the seed that fixes the training set), not the training seed, so runs with different seeds
    share one cache. Without augmentation: one identity draw."""
    from raydistill.data import decoded_size
    preset, size = exp.augment_preset(), exp.image_size()
    if preset == "none":
        return AugmentationBank.make(num_samples, 1, padding=0, flip=False, seed=exp.data.seed)
    if preset == "imagenet":
        return AugmentationBank.make(num_samples, exp.teachers.cache_draws, flip=True, seed=exp.data.seed,
                                     preset="imagenet", size=size, source_size=decoded_size(size, preset))
    return AugmentationBank.make(num_samples, exp.teachers.cache_draws, padding=4, flip=True, seed=exp.data.seed)
