"""In-memory image set: decoded once, sliced by index on the training path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


class DataError(ValueError):
    """Any problem with input data; the message names the file/field/row and what was expected."""


@dataclass
class ImageSet:
    """uint8 images [N,3,H,W] + int64 global labels [N]; kept whole in memory so batches are just slices."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(f"ImageSet.images must be uint8 [N,3,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(f"ImageSet.labels must be [N] with N={self.images.shape[0]}, got {tuple(self.labels.shape)}")
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)
        self.class_names = [str(c) for c in self.class_names]
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)):
            raise DataError(
                f"ImageSet.labels must lie in 0..{len(self.class_names) - 1}, "
                f"got range {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """Samples at `index` (long indices or bool mask); class ids and names are kept."""
        index = torch.as_tensor(index)
        return ImageSet(self.images[index].contiguous(), self.labels[index].clone(), list(self.class_names))

    def of_classes(self, classes: Sequence[int]) -> "ImageSet":
        """Samples whose label is in `classes`; labels stay global so a group's logits index the full head."""
        wanted = torch.as_tensor(list(classes), dtype=torch.int64)
        return self.subset(torch.isin(self.labels, wanted))


def first_n_per_class(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices of the first `n` samples of each class (deterministic cap for short runs)."""
    if n is None:
        return torch.arange(len(labels))
    if int(n) < 1:
        raise DataError(f"limit_per_class must be a positive integer, got {n!r}")
    keep = [torch.nonzero(labels == c).flatten()[: int(n)] for c in torch.unique(labels).tolist()]
    if not keep:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(keep)).values


def train_val_split(train: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified split: each class gives round(n_c * val_fraction) samples to val, chosen by `seed`."""
    train_idx, val_idx = split_indices(train.labels, train.num_classes, val_fraction, seed)
    return train.subset(train_idx), train.subset(val_idx)


def split_indices(labels: torch.Tensor, num_classes: int, val_fraction: float, seed: int):
    """(train, val) sorted indices of `train_val_split`, from the labels alone (streaming needs no pixels)."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    g = torch.Generator().manual_seed(int(seed))
    val_parts = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        n_val = int(round(len(idx) * float(val_fraction)))
        if n_val:
            val_parts.append(idx[torch.randperm(len(idx), generator=g)[:n_val]])
    val_idx = torch.sort(torch.cat(val_parts)).values if val_parts else torch.zeros(0, dtype=torch.int64)
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_idx] = True
    return torch.nonzero(~is_val).flatten(), val_idx


def channel_stats(images_uint8, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0,1] units of uint8 images; chunked exact histograms so 50k images stay cheap."""
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"channel_stats expects a non-empty uint8 [N,C,H,W] batch, got {images.dtype} {tuple(images.shape)}")
    c = images.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.int64, device=images.device)  # exact, cheap
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].transpose(0, 1).reshape(c, -1)
        for ch in range(c):
            hist[ch] += torch.bincount(x[ch], minlength=256)
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255.0
    count = images.shape[0] * images.shape[2] * images.shape[3]
    total, total_sq = hist.double() @ values, hist.double() @ values.square()
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
