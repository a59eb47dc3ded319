"""Data for raydistill: sources decoded once into uint8 tensors, class groups, batched augmentation."""
from .augment import (PRESETS, augment_batch, center_crop, crop_flip, decoded_size, normalize, random_crop_flip,
                      random_resized_crop_flip, resized_crop_flip)
from .groups import groups_from_ratio, validate_groups
from .imageset import DataError, ImageSet, channel_stats, train_val_split
from .resident import resident_on
from .sources import SOURCES, load_dataset
from .synthetic import make_synthetic

__all__ = [
    "DataError", "ImageSet", "PRESETS", "SOURCES", "augment_batch", "center_crop", "channel_stats", "crop_flip",
    "decoded_size", "groups_from_ratio", "load_dataset", "make_synthetic", "normalize", "random_crop_flip",
    "random_resized_crop_flip", "resident_on", "resized_crop_flip", "train_val_split", "validate_groups",
]
