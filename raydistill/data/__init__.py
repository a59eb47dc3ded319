"""Data for raydistill: sources decoded once into uint8 tensors, class groups, batched augmentation."""
from .augment import crop_flip, normalize, random_crop_flip
from .groups import groups_from_ratio, validate_groups
from .imageset import DataError, ImageSet, channel_stats, train_val_split
from .resident import resident_on
from .sources import SOURCES, load_dataset
from .synthetic import make_synthetic

__all__ = [
    "DataError", "ImageSet", "SOURCES", "channel_stats", "crop_flip", "groups_from_ratio", "load_dataset",
    "make_synthetic", "normalize", "random_crop_flip", "resident_on", "train_val_split", "validate_groups",
]
