"""The `data` section: where the images come from, how they are grouped, decoded and fed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from raydistill.config.errors import ConfigError, need

LOADERS = ("memory", "stream", "auto")


@dataclass
class DataConfig:
    """`data`: where the images come from, how many, how they are grouped, decoded and fed."""
    source: str = "builtin"             # builtin (synthetic, from data.seed), a torchvision set, images, Parquet
    root: Optional[str] = None          # cifar10/100, imagefolder, caltech256, food101 root
    train_path: Optional[str] = None    # parquet: the training table (columns img{bytes,path}, label)
    test_path: Optional[str] = None     # parquet: the test table (same columns)
    download: bool = False              # torchvision datasets only (cifar10/100, caltech256, food101)
    num_classes: int = 30               # builtin: number of classes
    train_per_class: Optional[int] = None  # builtin: training images per class (null: the generator's default)
    test_per_class: Optional[int] = None   # builtin: test images per class (null: the generator's default)
    limit_per_class: Optional[int] = None  # cap on train images per class, for short runs
    val_fraction: float = 0.1           # held out from train for model selection
    ratio: Optional[str] = "1:1:1"      # class groups as contiguous ranges: floor(C/sum(r))*r_i, remainder to the last
    groups: Optional[list] = None       # explicit class lists, one per group (overrides ratio); >= 2 classes each
    image_size: Optional[int] = None    # side the networks see; null: 32 (builtin, cifar10/100) or 224 (photos)
    augment: Union[str, bool, None] = None  # cifar | imagenet | none; null: cifar (32 px sources) or imagenet
    seed: int = 0                       # fixes the data: built-in generation, validation split, soft-label bank
    cache_dir: Optional[str] = None     # decoded-image shards; None = <output.dir>/decoded (shared by runs and trials)
    loader: str = "memory"              # memory: decoded set in each worker | stream: Ray Data pipeline | auto
    memory_fraction: float = 0.25       # auto: stream when the decoded train set needs more of a worker's memory
    stream_prefetch: int = 4            # stream: batches each worker prefetches

    def check(self) -> None:
        """The section's own fields: a source it can read, counts, fractions, the side and augmentation,
        and a ratio (or group list) that gives the groups."""
        from raydistill.data.augment import PRESETS
        from raydistill.data.sources import SOURCES
        d = self
        need(d.source in SOURCES, "data.source", f"one of {list(SOURCES)}", d.source)
        need(0 <= d.val_fraction < 1, "data.val_fraction", "a number in [0, 1)", d.val_fraction)
        if d.source == "builtin":
            need(d.num_classes >= 2, "data.num_classes", "at least 2", d.num_classes)
        if d.source == "parquet":
            need(bool(d.train_path) and bool(d.test_path), "data.train_path/test_path",
                 "both Parquet paths for source parquet", (d.train_path, d.test_path))
        if d.source in ("cifar10", "cifar100", "imagefolder"):
            need(bool(d.root), "data.root", f"a directory for source {d.source}", d.root)
        for name in ("train_per_class", "test_per_class", "limit_per_class"):
            v = getattr(d, name)
            need(v is None or v >= 1, f"data.{name}", "a positive integer or null", v)
        need(d.loader in LOADERS, "data.loader", f"one of {list(LOADERS)}", d.loader)
        need(0 < d.memory_fraction <= 1, "data.memory_fraction", "a number in (0, 1]", d.memory_fraction)
        need(isinstance(d.stream_prefetch, int) and d.stream_prefetch >= 1, "data.stream_prefetch",
             "a positive integer", d.stream_prefetch)
        need(d.groups is not None or d.ratio, "data.ratio", "a ratio like 1:1:1 when data.groups is not set",
             d.ratio)
        need(d.image_size is None or (isinstance(d.image_size, int) and 8 <= d.image_size <= 1024), "data.image_size",
             "an integer side in 8..1024 pixels, or null (32 for builtin/cifar10/cifar100, 224 otherwise)", d.image_size)
        need(d.augment is None or isinstance(d.augment, bool) or d.augment in PRESETS, "data.augment",
             f"one of {list(PRESETS)} or null (cifar for builtin/cifar10/cifar100, imagenet otherwise)",
             d.augment)
        if self.augment_preset() == "cifar":
            need(self.image_side() > 8, "data.image_size", "more than 8 pixels for augment cifar (4-pixel pad crops)",
                 self.image_side())
        self.num_groups()

    def num_groups(self) -> int:
        """Groups of classes: one per data.groups list, else one per data.ratio term."""
        if self.groups is not None:
            if not isinstance(self.groups, list) or not self.groups:
                raise ConfigError(f"data.groups: expected a list of class lists, got {self.groups!r}")
            return len(self.groups)
        try:
            terms = [int(x) for x in str(self.ratio).split(":")]
        except ValueError:
            raise ConfigError(f"data.ratio: expected integers separated by ':' like 1:1:1, "
                              f"got {self.ratio!r}") from None
        if not terms or any(t <= 0 for t in terms):
            raise ConfigError(f"data.ratio: expected positive integers like 1:1:1, got {self.ratio!r}")
        return len(terms)

    def image_side(self) -> int:
        """data.image_size, or its default for the source: 32 for builtin/cifar10/cifar100, 224 otherwise."""
        from raydistill.data.sources import default_image_size
        return int(self.image_size) if self.image_size is not None else default_image_size(self.source)

    def augment_preset(self) -> str:
        """data.augment as a preset name; null: cifar for the 32 px sources, imagenet for photographs;
        the booleans of older configs: true = cifar, false = none."""
        from raydistill.data.augment import preset_name
        from raydistill.data.sources import default_augment
        return default_augment(self.source) if self.augment is None else preset_name(self.augment)
