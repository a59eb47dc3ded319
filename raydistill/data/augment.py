"""Batched augmentation on uint8 tensors: one gather for the whole batch, no per-image Python.

`crop_flip` applies explicit per-sample draws, so the soft-label cache can replay exactly the
crops its teachers saw; `random_crop_flip` draws them from a generator and applies the same code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None,
              padding: int = 4) -> torch.Tensor:
    """Zero-pad by `padding`, crop HxW at per-sample `offsets` [N,2] = (dy, dx) in 0..2*padding,
    then mirror the samples where `flips` [N] (bool) is true; None means no flips."""
    n, c, h, w = images.shape
    if n == 0:
        return images.clone()
    offsets = offsets.to(device=images.device, dtype=torch.long)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    hp, wp = h + 2 * padding, w + 2 * padding
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = offsets[:, 0, None] + ar_h                    # [N,H]
    cols = ar_w.expand(n, w)
    if flips is not None:
        cols = torch.where(flips.to(images.device, torch.bool)[:, None], (w - 1) - cols, cols)
    cols = offsets[:, 1, None] + cols                    # [N,W]
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    out = torch.gather(padded.reshape(n, c, hp * wp), 2, flat)
    return out.reshape(n, c, h, w)


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Zero-pad, crop back to HxW at a per-sample offset, flip per sample; deterministic given `generator`."""
    n = images.shape[0]
    if n == 0 or (padding == 0 and not flip):
        return images.clone()
    gdev = generator.device if generator is not None else torch.device("cpu")
    offs = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=gdev).to(images.device)
    flips = torch.rand(n, generator=generator, device=gdev).to(images.device) < 0.5 if flip else None
    return crop_flip(images, offs.t(), flips, padding)


def normalize(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """float32 (x/255 - mean)/std per channel, broadcast over [N,C,H,W] or [C,H,W]."""
    dev = images_uint8.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=dev).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=dev).view(-1, 1, 1)
    return (images_uint8.to(torch.float32) / 255.0 - m) / s
