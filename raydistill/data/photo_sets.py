"""Caltech-256 and Food-101 in torchvision's own layout, found (or, with `download`, fetched) by
torchvision's dataset classes and decoded once, like every other source, into uint8 squares.

Food-101 has an official split (meta/train.json, meta/test.json: 750 / 250 images per class).
Caltech-256 has none: the last `CALTECH_TEST_FRACTION` of each class's images (in file order) are
the test set, the rest train, so every run and every machine sees the same split.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .imageset import DataError, ImageSet, first_n_per_class

CALTECH_TEST_FRACTION = 0.2


def _dataset(cls, root, download: bool, needs: tuple, **kw):
    """torchvision's dataset object; a missing copy becomes one DataError naming the folders it needs
    (checked first without download, so a mistyped root creates nothing: Caltech256 makes its folder)."""
    expected = " and ".join(needs)
    if root is None:
        raise DataError(f"source {cls.__name__.lower()!r} needs `data.root`, the folder that holds {expected}")
    missing = [n for n in needs if not (Path(root) / n).is_dir()]
    try:
        if missing and not download:
            raise RuntimeError(missing)
        return cls(root=str(root), download=download, **kw)
    except RuntimeError:
        hint = "set data.download: true to fetch it" if not download else "the download did not produce it"
        raise DataError(f"{cls.__name__.lower()}: {' and '.join(repr(str(Path(root) / n)) for n in needs)} "
                        f"not found under data.root "
                        f"{str(root)!r}; {hint}, or point data.root at a copy in torchvision's layout") from None
    except Exception as exc:   # network errors when download=True offline
        raise DataError(f"{cls.__name__.lower()}: could not obtain the data under data.root {str(root)!r}: "
                        f"{type(exc).__name__}: {exc}") from None


def _decode(paths: list[Path], labels: list[int], names: list[str], size: int, source: str) -> ImageSet:
    from .image_bytes import decode_image_bytes

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        if not path.is_file():
            raise DataError(f"{source}: image file {str(path)!r} is missing (listed by the dataset's layout)")
        out[i] = decode_image_bytes(path.read_bytes(), f"{source} file {str(path)!r}", size)
    return ImageSet(out, torch.as_tensor(labels, dtype=torch.int64), names)


def _capped(paths: list[Path], labels: list[int], limit_per_class) -> tuple[list[Path], list[int]]:
    if limit_per_class is None:
        return paths, labels
    keep = first_n_per_class(torch.as_tensor(labels, dtype=torch.int64), limit_per_class).tolist()
    return [paths[i] for i in keep], [labels[i] for i in keep]


def load_caltech256(root, download: bool = False, limit_per_class=None, size: int = 224) -> tuple[ImageSet, ImageSet]:
    """<root>/caltech256/256_ObjectCategories/<NNN.name>/<NNN>_<XXXX>.jpg, all 257 categories
    (clutter included, as torchvision lists them); split per class as the module says."""
    from torchvision.datasets import Caltech256

    ds = _dataset(Caltech256, root, download, ("caltech256/256_ObjectCategories",))
    if not ds.categories:
        raise DataError(f"caltech256: {str(Path(ds.root) / '256_ObjectCategories')!r} has no category folders")
    folder = Path(ds.root) / "256_ObjectCategories"
    splits = {"train": ([], []), "test": ([], [])}
    for c, name in enumerate(ds.categories):
        numbers = [k for k, y in zip(ds.index, ds.y) if y == c]
        if len(numbers) < 2:
            raise DataError(f"caltech256: category folder {str(folder / name)!r} has {len(numbers)} .jpg images; "
                            f"expected at least 2 (one to train on, one to test)")
        n_test = max(1, int(round(len(numbers) * CALTECH_TEST_FRACTION)))
        for split, part in (("train", numbers[:-n_test]), ("test", numbers[-n_test:])):
            splits[split][0].extend(folder / name / f"{c + 1:03d}_{k:04d}.jpg" for k in part)
            splits[split][1].extend([c] * len(part))
    names = [n.split(".", 1)[-1] for n in ds.categories]
    train = _decode(*_capped(*splits["train"], limit_per_class), names, size, "caltech256")
    return train, _decode(*splits["test"], names, size, "caltech256")


def load_food101(root, download: bool = False, limit_per_class=None, size: int = 224) -> tuple[ImageSet, ImageSet]:
    """<root>/food-101/{meta/train.json, meta/test.json, images/<class>/<id>.jpg}: the official split."""
    from torchvision.datasets import Food101

    sets = []
    for split, limit in (("train", limit_per_class), ("test", None)):
        ds = _dataset(Food101, root, download, ("food-101/meta", "food-101/images"), split=split,
                      loader=lambda path: path)       # the loader hands back the path; decoding is ours
        paths, labels = zip(*(ds[i] for i in range(len(ds)))) if len(ds) else ((), ())
        if not paths:
            raise DataError(f"food101: {str(Path(root) / 'food-101' / 'meta' / (split + '.json'))!r} lists no images")
        sets.append(_decode(*_capped([Path(p) for p in paths], list(labels), limit), list(ds.classes), size, "food101"))
    if sets[0].class_names != sets[1].class_names:
        raise DataError(f"food101: meta/train.json and meta/test.json under {str(Path(root) / 'food-101')!r} "
                        f"list different classes")
    return sets[0], sets[1]
