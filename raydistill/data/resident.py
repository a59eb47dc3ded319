"""The training set resident on the accelerator: uint8 images moved to the GPU once, when they fit.

CIFAR-size sets are small as uint8 (50k x 3x32x32 = 154 MB), so a GPU trainer can keep them on
the device and do the per-batch work there: indexing, crop/flip (`augment.crop_flip`, a gather)
and normalisation run on the device, and only a batch's index and its random draws cross from
the host. Draws still come from the same CPU generator as on the host path (`random_crop_flip`
draws on the generator's device and moves the draws to the images' device), so both paths
produce the same pixels for the same seed. Labels stay on the host, where the engine's
bookkeeping (passes, shards, lessons) reads them.
"""
from __future__ import annotations

import torch

from .imageset import ImageSet


def free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device; 0 for devices whose free memory torch cannot report."""
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def resident_on(data: ImageSet, device, max_fraction: float) -> ImageSet:
    """`data` with its uint8 images on `device` when they take at most `max_fraction` of the
    device's free memory; otherwise (or on the CPU, where host and device are one) `data` itself."""
    device = torch.device(device)
    if data.images.device == device or device.type == "cpu" or max_fraction <= 0:
        return data
    nbytes = data.images.numel() * data.images.element_size()
    if nbytes > max_fraction * free_device_memory(device):
        return data
    return ImageSet(data.images.to(device), data.labels, data.class_names)
