"""Batched augmentation on uint8 tensors: one call for the whole batch, no per-image Python.

Presets (`data.augment`): `cifar` pad-4 crop + flip, `imagenet` random-resized crop + flip,
`none`. Each has an explicit-draw form (`crop_flip`, `resized_crop_flip`), so the soft-label cache
can replay exactly the crops its teachers saw, and a random form that draws from a generator and
applies the same code. Evaluation always takes the centre crop of the decoded square.
"""
from __future__ import annotations

import math

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


# --------------------------------------------------------------------------- presets at any size
PRESETS = ("cifar", "imagenet", "none")
EVAL_CROP_FRACTION = 0.875      # ImageNet's 224-of-256: evaluation centre-crops this fraction of the decoded side
RRC_SCALE = (0.08, 1.0)         # torchvision's RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)


def preset_name(augment) -> str:
    """A preset name; the booleans of older configs mean `cifar` (true) and `none` (false)."""
    if isinstance(augment, bool):
        return "cifar" if augment else "none"
    if augment not in PRESETS:
        raise ValueError(f"augmentation preset: expected one of {list(PRESETS)}, got {augment!r}")
    return augment


def decoded_size(image_size: int, augment) -> int:
    """Side of the square the training images are decoded to: `imagenet` keeps image_size/0.875
    (256 for 224) so random-resized crops and the evaluation centre crop have pixels to take;
    the other presets train at image_size itself."""
    return int(round(image_size / EVAL_CROP_FRACTION)) if preset_name(augment) == "imagenet" else int(image_size)


def square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [..., H, W] -> [..., size, size]: shorter side resized to `size` (antialiased), then the
    centre square, so photographs keep their aspect ratio. Unchanged when already size x size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    from torchvision.transforms.v2 import functional as TF

    if min(images.shape[-2:]) != size:
        images = TF.resize(images, size, antialias=True)
    return TF.center_crop(images, [size, size])


def center_crop(images: torch.Tensor, size) -> torch.Tensor:
    """The evaluation view: the central size x size (no-op when the images already are, or size is None)."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(images, [size, size])


def resized_crop_params(n: int, height: int, width: int, generator: torch.Generator | None = None,
                        scale=RRC_SCALE, ratio=RRC_RATIO, tries: int = 10) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes, long [n, 4] = (top, left, h, w): torchvision's rule
    (area fraction in `scale`, log-uniform aspect in `ratio`, first of `tries` that fits, else the
    centre crop at the nearest allowed aspect) drawn for all samples at once from `generator`."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, device=gdev))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator, device=gdev))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.long().argmax(1)                 # first try that fits (0 when none: replaced below)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    in_ratio = width / height                     # torchvision's fallback: whole image at a clamped aspect
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    none_fit = ~fits.any(1)
    w = torch.where(none_fit, torch.full_like(w, fw), w)
    h = torch.where(none_fit, torch.full_like(h, fh), h)
    u = torch.rand(n, 2, generator=generator, device=gdev)
    top = (u[:, 0] * (height - h + 1)).floor().long().clamp_max(height - h)
    left = (u[:, 1] * (width - w + 1)).floor().long().clamp_max(width - w)
    top = torch.where(none_fit, (height - h) // 2, top)
    left = torch.where(none_fit, (width - w) // 2, left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None,
                      size: int) -> torch.Tensor:
    """uint8 [N,C,H,W] -> uint8 [N,C,size,size]: each sample's box (top, left, h, w) resized to
    size x size in one batched call (torchvision's roi_align, bilinear; boxes larger than the
    output average 2x2 samples per pixel), then mirrored where `flips` is true."""
    from torchvision.ops import roi_align

    n = images.shape[0]
    if n == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    b = boxes.to(device=images.device, dtype=torch.float32)
    rois = torch.stack([torch.arange(n, device=images.device, dtype=torch.float32),
                        b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], dim=1)
    out = roi_align(images.float(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True).round_().clamp_(0, 255).to(torch.uint8)
    if flips is not None:
        out = torch.where(flips.to(images.device, torch.bool)[:, None, None, None], out.flip(-1), out)
    return out


def random_resized_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator | None = None,
                             flip: bool = True) -> torch.Tensor:
    """ImageNet-style training view: a per-sample random-resized crop to size x size and a flip,
    drawn from `generator` (deterministic given it), applied on the images' device."""
    n, _, height, width = images.shape
    boxes = resized_crop_params(n, height, width, generator)
    gdev = generator.device if generator is not None else torch.device("cpu")
    flips = torch.rand(n, generator=generator, device=gdev) < 0.5 if flip else None
    return resized_crop_flip(images, boxes, flips, size)


def augment_batch(images: torch.Tensor, augment, size: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """The training view of a uint8 batch under a preset: `cifar` pad-4 crop + flip at the stored
    size, `imagenet` random-resized crop to `size` + flip, `none` the evaluation view."""
    preset = preset_name(augment)
    if preset == "cifar":
        return random_crop_flip(images, padding=4, generator=generator)
    if preset == "imagenet":
        return random_resized_crop_flip(images, size or images.shape[-1], generator)
    return center_crop(images, size)
