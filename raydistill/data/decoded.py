"""Decode once: the decoded uint8 train/test sets of a data configuration, stored as .npy shards
and loaded by every later run, resumed run and Tune trial instead of decoding again.

The key is what the decoded pixels depend on: the source, its files (path, size, mtime), the
image size, the train limit per class, and the decoder (torchvision version, this module's
format version). Only sources that decode images are stored (parquet, imagefolder); `builtin`
is generated and CIFAR's torchvision batches are already pixel arrays. A directory is complete
once its `meta.json` exists (written last, after the shards) and lists every shard present
(`cachedirs.incomplete`), so a crash never leaves a half-written entry that a later run would
trust. One process decodes a key at a time (`cachedirs.build_lock`); concurrent stages wait and
load its shards. Every decode appends one line to `<cache root>/decodes.jsonl`: how many times a
configuration was decoded is a file, not a guess.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from raydistill.storage.cachedirs import META_FILE, build_lock, incomplete, local_cache_dir, manifest, mirror, publish

from .augment import decoded_size
from .imageset import ImageSet

FORMAT_VERSION = 1
DECODE_LOG = "decodes.jsonl"
SHARD_BYTES = 256 * 2 ** 20    # ~256 MB of uint8 pixels per shard file
DECODING_SOURCES = ("parquet", "imagefolder")


def decoded_root(exp) -> str:
    """`data.cache_dir`, else `<output.dir>/decoded` (next to the run directories, so every run and
    trial under one output.dir shares it). A local path or a storage URI."""
    from raydistill.storage import join
    return exp.data.cache_dir or join(exp.output.dir, "decoded")


def _stat(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _absolute(path: str) -> Path:
    """A relative path in the driver and its absolute form in a trial or worker
    (pipeline.prepare.with_absolute_paths) must give the same key."""
    return Path(path).expanduser().resolve()


def _files(d) -> list:
    """(absolute path, size, mtime) of every input file of the configuration, in a stable order."""
    if d.source == "parquet":
        return [_stat(_absolute(d.train_path)), _stat(_absolute(d.test_path))]
    root = _absolute(d.root)
    return [_stat(p) for p in sorted(root.rglob("*")) if p.is_file()]


def decoded_key(d, image_size: int) -> tuple[str, dict]:
    """(hex key, components) of a DataConfig whose source decodes images to `image_size` squares
    (the resolved decoded side: `data.image_size` may be null, and the imagenet preset decodes larger)."""
    import torchvision
    components = {"version": FORMAT_VERSION, "source": d.source, "files": _files(d),
                  "image_size": int(image_size),
                  "limit_per_class": d.limit_per_class, "torchvision": torchvision.__version__}
    return hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest(), components


def _write_split(directory: Path, name: str, data: ImageSet) -> dict:
    images = data.images.numpy()
    per_shard = max(1, SHARD_BYTES // max(1, images[:1].nbytes))
    shards = []
    for i, start in enumerate(range(0, max(len(images), 1), per_shard)):
        shard = f"{name}-{i:05d}.npy"
        np.save(directory / shard, images[start:start + per_shard])
        shards.append(shard)
    np.save(directory / f"{name}-labels.npy", data.labels.numpy())
    return {"shards": shards, "count": len(data), "shape": list(images.shape[1:])}


def _read_split(directory: Path, entry: dict, class_names: list) -> ImageSet:
    images = np.empty((entry["count"], *entry["shape"]), dtype=np.uint8)
    start = 0
    for shard in entry["shards"]:
        part = np.load(directory / shard, mmap_mode="r")
        images[start:start + len(part)] = part
        start += len(part)
    labels = np.load(directory / f"{entry['shards'][0].rsplit('-', 1)[0]}-labels.npy")
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), class_names)


def read_decoded(directory: Path, key: str) -> Optional[tuple[ImageSet, ImageSet]]:
    """(train, test) from a complete directory with this key, else None."""
    if incomplete(directory) is not None:
        return None
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    names = meta["class_names"]
    return _read_split(directory, meta["train"], names), _read_split(directory, meta["test"], names)


def write_decoded(directory: Path, key: str, components: dict, train: ImageSet, test: ImageSet,
                  seconds: float) -> None:
    """Write shards into a temporary sibling, meta.json (with the manifest of the shards) last, and
    rename it into place (atomic on one filesystem). A complete `directory` (a builder without the
    key's lock finished first) is kept, never replaced: its copy is as good as ours."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        meta = {"key": key, "components": components, "class_names": train.class_names,
                "train": _write_split(tmp, "train", train), "test": _write_split(tmp, "test", test),
                "decode_seconds": round(seconds, 3), "created": time.time()}
        (tmp / META_FILE).write_text(json.dumps({**meta, "manifest": manifest(tmp)}, indent=1))
        if incomplete(directory) is not None:
            shutil.rmtree(directory, ignore_errors=True)   # an incomplete entry
            try:
                tmp.rename(directory)
            except OSError:   # a builder without the lock (flock not shared by this mount) won the race
                if incomplete(directory) is not None:
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_decoded(exp, decode: Callable[[], tuple[ImageSet, ImageSet]],
                 log: Optional[Callable[[str], None]] = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) of `exp.data`: read from the decoded-shard cache, or `decode()` and stored there.
    Sources that do not decode images are returned from `decode()` directly."""
    log = log or (lambda _msg: None)
    if exp.data.source not in DECODING_SOURCES:
        return decode()
    root = decoded_root(exp)
    try:
        key, components = decoded_key(exp.data, decoded_size(exp.image_size(), exp.augment_preset()))
    except OSError:   # an input file is missing or unreadable: the source's own loader names it
        return decode()
    directory = local_cache_dir(root, key[:16], log)
    cached = read_decoded(directory, key)
    if cached is None:
        with build_lock(directory, log):   # one decode per key; the others wait, then load its shards
            directory = mirror(root, key[:16], log)
            cached = read_decoded(directory, key)
            if cached is None:
                return _decode_and_store(exp, decode, root, directory, key, components, log)
    log(f"data: decoded shards loaded from {directory} ({len(cached[0])} train, {len(cached[1])} test images)")
    return cached


def _decode_and_store(exp, decode, root, directory: Path, key: str, components: dict, log):
    """Decode, write the shards (and publish them to a URI root, meta.json last), log the decode;
    the caller holds the key's lock."""
    from raydistill.storage import RunDir, is_uri
    started = time.perf_counter()
    train, test = decode()
    seconds = time.perf_counter() - started
    write_decoded(directory, key, components, train, test, seconds)
    if is_uri(root):
        publish(root, directory)
    line = json.dumps({"key": key[:16], "images": len(train) + len(test), "seconds": round(seconds, 3),
                       "pid": os.getpid(), "time": time.time()})
    if is_uri(root):
        RunDir(root).append_line(DECODE_LOG, line)
    else:
        with open(Path(root).expanduser() / DECODE_LOG, "a") as f:
            f.write(line + "\n")
    log(f"data: decoded {len(train) + len(test)} images in {seconds:.1f} s, stored as shards in {directory}")
    return train, test
