"""Loaders per data source; each returns (train, test) ImageSets decoded once into uint8 tensors.

Every image is decoded to a `size` x `size` square (shorter side resized, centre square kept) once
per run; the caller picks `size` from data.image_size and the augmentation preset
(`augment.decoded_size`), so epochs only slice and crop tensors."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .augment import square
from .image_bytes import decode_image_bytes
from .imageset import DataError, ImageSet, first_n_per_class
from .parallel import decode_many

SMALL_IMAGE_SOURCES = ("builtin", "cifar10", "cifar100")         # 32 px data: data.image_size defaults to 32
PHOTO_SOURCES = ("imagefolder", "parquet", "caltech256", "food101")  # any size: data.image_size defaults to 224
SOURCES = SMALL_IMAGE_SOURCES + PHOTO_SOURCES
_IMG_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def default_image_size(source: str) -> int:
    """data.image_size when the config leaves it null: 32 for the CIFAR-like sources, 224 for photographs."""
    return 32 if source in SMALL_IMAGE_SOURCES else 224


def default_augment(source: str) -> str:
    """data.augment when the config leaves it null: CIFAR's pad-4 crops for 32 px data, ImageNet's
    random-resized crops for photographs."""
    return "cifar" if source in SMALL_IMAGE_SOURCES else "imagenet"


def _limit(ds: ImageSet, limit_per_class) -> ImageSet:
    return ds if limit_per_class is None else ds.subset(first_n_per_class(ds.labels, limit_per_class))


# --------------------------------------------------------------------------- cifar (torchvision)
def load_cifar(name: str, root, download: bool = False, limit_per_class=None) -> tuple[ImageSet, ImageSet]:
    """CIFAR-10/100 through torchvision's pickled batches; `.data` is already NHWC uint8."""
    from torchvision import datasets

    if root is None:
        raise DataError(f"source {name!r} needs `root` (a folder holding or receiving the CIFAR files)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except RuntimeError as exc:
            raise DataError(
                f"{name}: dataset not found or corrupted under root {str(root)!r} "
                f"(expected {cls.base_folder}/ there); set `download: true` to fetch it ({exc})"
            ) from None
        except Exception as exc:  # network errors when download=True offline
            raise DataError(f"{name}: could not obtain data under root {str(root)!r}: {type(exc).__name__}: {exc}") from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        out.append(ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes)))
    return _limit(out[0], limit_per_class), out[1]


# --------------------------------------------------------------------------- imagefolder
def _folder_files(split_dir: Path) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DataError(f"imagefolder: missing folder {str(split_dir)!r}; expected <root>/train and <root>/test class folders")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder: {str(split_dir)!r} has no class sub-folders")
    return {c: sorted(f for f in (split_dir / c).rglob("*") if f.is_file() and f.suffix.lower() in _IMG_EXT)
            for c in classes}


def load_imagefolder(root, limit_per_class=None, size: int = 32) -> tuple[ImageSet, ImageSet]:
    """<root>/{train,test}/<class>/<image>; class names (sorted folder names) must match across splits."""
    if root is None:
        raise DataError("source 'imagefolder' needs `root` containing train/ and test/")
    root = Path(root)
    train_files, test_files = _folder_files(root / "train"), _folder_files(root / "test")
    if list(train_files) != list(test_files):
        only_train = sorted(set(train_files) - set(test_files))
        only_test = sorted(set(test_files) - set(train_files))
        raise DataError(f"imagefolder: train/ and test/ under {str(root)!r} have different classes "
                        f"(only in train: {only_train}, only in test: {only_test})")
    names = list(train_files)
    sets = []
    for split, files, limit in (("train", train_files, limit_per_class), ("test", test_files, None)):
        all_paths, labels = [], []
        for ci, c in enumerate(names):
            paths = files[c][: int(limit)] if limit is not None else files[c]
            if split == "train" and not paths:
                raise DataError(f"imagefolder: class folder {str(root / split / c)!r} has no images")
            all_paths += paths
            labels += [ci] * len(paths)
        images = decode_many(all_paths, [f"imagefolder file {str(p)!r}" for p in all_paths],
                             partial(decode_image_bytes, size=size), (3, size, size))
        sets.append(ImageSet(images, torch.as_tensor(labels, dtype=torch.int64), names))
    return sets[0], sets[1]


# --------------------------------------------------------------------------- parquet
def _label_names_from_metadata(meta: dict | None) -> list[str] | None:
    """`label_names` (JSON list) or HuggingFace `huggingface` info with features.label.names."""
    if not meta:
        return None
    if b"label_names" in meta:
        try:
            names = json.loads(meta[b"label_names"])
            if isinstance(names, list):
                return [str(n) for n in names]
        except ValueError:
            pass
    if b"huggingface" in meta:
        try:
            info = json.loads(meta[b"huggingface"])
            feats = info.get("info", {}).get("features") or info.get("features") or {}
            names = (feats.get("label") or {}).get("names")
            if isinstance(names, list):
                return [str(n) for n in names]
        except (ValueError, AttributeError):
            pass
    return None


def parquet_labels(path):
    """Validated (int64 labels of every row, label names or None) of one file, without its images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path is None:
        raise DataError("source 'parquet' needs both `train_path` and `test_path`")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"parquet file {str(path)!r} does not exist; expected an existing Parquet file "
                        f"(data.train_path / data.test_path)")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise DataError(f"parquet file {str(path)!r} is not readable Parquet: {exc}") from None
    img_field = schema.field("img") if "img" in schema.names else None
    ok = (img_field is not None and pa.types.is_struct(img_field.type)
          and img_field.type.get_field_index("bytes") >= 0 and "label" in schema.names)
    if not ok:
        raise DataError(f"parquet file {str(path)!r} lacks the expected columns `img.bytes` (struct img with a "
                        f"binary field bytes) and `label`; found columns {schema.names}")
    table = pq.read_table(path, columns=["label"])
    if table.num_rows == 0:
        raise DataError(f"parquet file {str(path)!r} has no rows; expected at least one image per class")
    label_col = table.column("label")
    if not pa.types.is_integer(label_col.type):
        raise DataError(f"parquet file {str(path)!r}: column `label` must be integer, got {label_col.type}")
    if label_col.null_count:
        row = int(np.flatnonzero(label_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"parquet file {str(path)!r} row {row}: `label` is null")
    labels = torch.from_numpy(label_col.to_numpy().astype(np.int64))
    names = _label_names_from_metadata(schema.metadata)
    out_of_range = labels < 0
    if names:
        out_of_range |= labels >= len(names)
    bad = torch.nonzero(out_of_range).flatten()
    if len(bad):
        row = int(bad[0])
        expect = f"0..{len(names) - 1} ({len(names)} label names in metadata)" if names else ">= 0"
        raise DataError(f"parquet file {str(path)!r} row {row}: label {int(labels[row])} out of range, expected {expect}")
    return labels, names


def _read_parquet(path, limit_per_class=None):
    """Validated (list of bytes, int64 labels, label names or None, row ids) from one file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels, names = parquet_labels(path)
    table = pq.read_table(path, columns=["img"])
    rows = first_n_per_class(labels, limit_per_class) if limit_per_class is not None else torch.arange(len(labels))
    img_bytes = table.column("img").combine_chunks().field("bytes")
    if limit_per_class is not None:
        img_bytes = img_bytes.take(pa.array(rows.numpy()))
    return img_bytes.to_pylist(), labels[rows], names, rows


def _decode_parquet(path, blobs, rows, size: int) -> torch.Tensor:
    for i, b in enumerate(blobs):
        if b is None:
            raise DataError(f"parquet file {str(path)!r} row {int(rows[i])}: `img.bytes` is null")
    return decode_many(blobs, [f"parquet file {str(path)!r} row {int(r)}" for r in rows.tolist()],
                       partial(decode_image_bytes, size=size), (3, size, size))


def load_parquet(train_path, test_path, limit_per_class=None, size: int = 32) -> tuple[ImageSet, ImageSet]:
    """HuggingFace-style CIFAR Parquet (img.bytes, label); label names from schema metadata or str(i)."""
    tr_blobs, tr_labels, tr_names, tr_rows = _read_parquet(train_path, limit_per_class)
    te_blobs, te_labels, te_names, te_rows = _read_parquet(test_path)
    if tr_names and te_names and tr_names != te_names:
        raise DataError(f"parquet label names differ between {str(train_path)!r} and {str(test_path)!r}")
    names = tr_names or te_names
    if names is None:
        top = max(int(tr_labels.max()) if len(tr_labels) else -1, int(te_labels.max()) if len(te_labels) else -1)
        names = [str(i) for i in range(top + 1)]
    for path, labels, rows in ((train_path, tr_labels, tr_rows), (test_path, te_labels, te_rows)):
        bad = torch.nonzero(labels >= len(names)).flatten()
        if len(bad):
            raise DataError(f"parquet file {str(path)!r} row {int(rows[bad[0]])}: label {int(labels[bad[0]])} "
                            f"out of range, expected 0..{len(names) - 1}")
    train = ImageSet(_decode_parquet(train_path, tr_blobs, tr_rows, size), tr_labels, names)
    test = ImageSet(_decode_parquet(test_path, te_blobs, te_rows, size), te_labels, names)
    return train, test


# --------------------------------------------------------------------------- dispatcher
def load_dataset(source: str, *, root=None, train_path=None, test_path=None, download=False,
                 num_classes=None, train_per_class=None, test_per_class=None, seed=0,
                 limit_per_class=None, size=None) -> tuple[ImageSet, ImageSet]:
    """(train, test) for `source`, every image a `size` x `size` square (None: `default_image_size`).
    num_classes/…_per_class/seed shape `builtin`; for real sources a given num_classes is checked
    against the data, and limit_per_class caps train samples per class."""
    size = int(size or default_image_size(source))
    if source == "builtin":
        from .synthetic import make_synthetic

        kw = {"seed": seed}
        if num_classes is not None:
            kw["num_classes"] = num_classes
        if train_per_class is not None:
            kw["train_per_class"] = train_per_class
        if test_per_class is not None:
            kw["test_per_class"] = test_per_class
        train, test = make_synthetic(**kw)
        train = _limit(train, limit_per_class)
    elif source in ("cifar10", "cifar100"):
        train, test = load_cifar(source, root, download=download, limit_per_class=limit_per_class)
    elif source == "imagefolder":
        train, test = load_imagefolder(root, limit_per_class=limit_per_class, size=size)
    elif source == "parquet":
        train, test = load_parquet(train_path, test_path, limit_per_class=limit_per_class, size=size)
    elif source in ("caltech256", "food101"):
        from .photo_sets import load_caltech256, load_food101

        loader = load_caltech256 if source == "caltech256" else load_food101
        train, test = loader(root, download=download, limit_per_class=limit_per_class, size=size)
    else:
        raise DataError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")
    if train.images.shape[-1] != size:   # the 32 px tensor sources, at another size
        train, test = (ImageSet(square(s.images, size), s.labels, s.class_names) for s in (train, test))
    if num_classes is not None and train.num_classes != int(num_classes):
        raise DataError(f"source {source!r} has {train.num_classes} classes but num_classes={num_classes} was given")
    return train, test
