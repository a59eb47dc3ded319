"""`data.loader: stream`: the training data as Ray Data pipelines instead of a decoded copy per worker.

Driver side (no pixels): `stream_splits` reads only the label column, applies the train limit and
the seeded train/val split exactly as memory mode does, and gives every training sample the
`sample_id` it has in memory mode (its position in the training set), so the soft-label cache's
bank and logits address the same samples in both modes. `stream_datasets` builds one pipeline
per class set a stage asks for (a lesson for `sequential`, a grade's union for `mixed`):

    read_parquet(img, row_hash) -> keep this split's rows of these classes, attach sample_id
    -> random_shuffle (encoded rows; reseeded every epoch) -> decode in map_batches (cluster CPUs)

handed to the Ray Train workers as `TorchTrainer(datasets=...)`. Ray Train splits each dataset
with `streaming_split(equal=True)`, which drops rows to make the shares equal; so each pipeline is
padded to a multiple of the workers with repeats flagged `real=False` (trained on for DDP's equal
steps, never counted), as memory mode pads its shards. Crop/flip stays in the worker (a batched
gather on uint8): the soft-label cache replays per-(sample, epoch) draws that only the engine knows.

Worker side: `StreamSplit.pass_batches` / `eval_batches` read `ray.train.get_dataset_shard(name)`
with `iter_torch_batches` and prefetching. A Ray Data row hash (path, row) identifies rows in
the pipeline; the driver computes the same hashes to map them to sample ids.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .augment import decoded_size
from .imageset import DataError, first_n_per_class, split_indices

STREAM_SOURCES = ("parquet",)
SHUFFLE_SEED_OFFSET = 7717   # pipeline shuffles draw from their own seed, apart from the engine's streams


def row_hashes(path: str, rows: int) -> np.ndarray:
    """Ray Data's `row_hash` of rows 0..rows-1 of a Parquet file read whole (one fragment per file)."""
    from ray.data._internal.datasource_v2.common.synthesized_columns import _compute_row_hashes
    return _compute_row_hashes(path, 0, rows)


@dataclass
class StreamSplit:
    """One split (train, val or test) as an index: file, row hash and label per sample; pixels stay
    in storage. `classes` (None: all) narrows it like `ImageSet.of_classes`. In a worker,
    `all_reduce_sum` and `world_size` come from the Train context (`attach`)."""
    name: str
    path: str
    hashes: np.ndarray                  # uint64 row hash per sample (sample_id = position)
    labels: torch.Tensor
    class_names: list
    image_size: int
    classes: Optional[tuple] = None
    prefetch: int = 4
    rank: int = 0
    world_size: int = 1
    all_reduce_sum: Callable = field(default=lambda t: t, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0]) if self.classes is None else int(self.mask().sum())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def mask(self) -> torch.Tensor:
        if self.classes is None:
            return torch.ones(len(self.labels), dtype=torch.bool)
        return torch.isin(self.labels, torch.tensor(self.classes))

    def of_classes(self, classes: Sequence[int]) -> "StreamSplit":
        return replace(self, classes=tuple(sorted(int(c) for c in classes)))

    def attach(self, rank: int, world_size: int, all_reduce_sum: Callable) -> "StreamSplit":
        return replace(self, rank=rank, world_size=world_size, all_reduce_sum=all_reduce_sum)

    # ---- worker side ----
    def pass_batches(self, classes: Sequence[int], per_worker: int) -> Iterator[tuple]:
        """(sample_ids, uint8 images, labels, real count) batches of this worker's share of one pass
        over `classes`; real samples first in each batch. A trailing batch of one is dropped (BN),
        on every worker alike (the shares are equal)."""
        pending, yielded = None, 0
        for batch in self._shard(dataset_name(self.name, classes)).iter_torch_batches(
                batch_size=per_worker, prefetch_batches=self.prefetch, device="cpu"):
            real = batch["real"].bool()
            order = torch.argsort((~real).to(torch.uint8), stable=True)
            item = (batch["sample_id"][order], batch["image"][order], batch["label"][order], int(real.sum()))
            if pending is not None:
                yield pending
                yielded += 1
            pending = item
        if pending is not None and (len(pending[0]) >= 2 or yielded == 0):
            yield pending

    def eval_batches(self, batch_size: int) -> Iterator[tuple]:
        """(uint8 images, labels) of this worker's share of the split (padding removed), only the
        samples of `classes` when set."""
        wanted = None if self.classes is None else torch.tensor(self.classes)
        for batch in self._shard(dataset_name(self.name, None)).iter_torch_batches(
                batch_size=batch_size, prefetch_batches=self.prefetch, device="cpu"):
            keep = batch["real"].bool()
            if wanted is not None:
                keep &= torch.isin(batch["label"], wanted)
            if keep.any():
                yield batch["image"][keep], batch["label"][keep]

    @staticmethod
    def _shard(name: str):
        import ray.train
        shard = ray.train.get_dataset_shard(name)
        if shard is None:
            raise RuntimeError(f"stream loader: the trainer was given no dataset {name!r}")
        return shard


def dataset_name(split: str, classes: Optional[Sequence[int]]) -> str:
    """The TorchTrainer dataset of a split's pass over `classes` (None: the whole split)."""
    if classes is None:
        return split
    digest = hashlib.sha1(",".join(str(c) for c in sorted(int(c) for c in classes)).encode()).hexdigest()[:12]
    return f"{split}-{digest}"


def stream_splits(exp) -> tuple[StreamSplit, StreamSplit, StreamSplit]:
    """(train, val, test) indexes of a Parquet configuration, with the samples memory mode would have."""
    from . import sources
    d = exp.data
    if d.source not in STREAM_SOURCES:
        raise DataError(f"data.loader stream: source {d.source!r} cannot stream; expected one of {list(STREAM_SOURCES)}")
    size = decoded_size(exp.image_size(), exp.augment_preset())   # what memory mode decodes to
    tr_labels, tr_names = sources.parquet_labels(d.train_path)
    te_labels, te_names = sources.parquet_labels(d.test_path)
    names = tr_names or te_names or [str(i) for i in range(int(max(tr_labels.max(), te_labels.max())) + 1)]
    rows = first_n_per_class(tr_labels, d.limit_per_class)
    train_at, val_at = split_indices(tr_labels[rows], len(names), d.val_fraction, d.seed)
    hashes = row_hashes(d.train_path, len(tr_labels))
    prefetch = d.stream_prefetch

    def split(name, path, h, labels):
        return StreamSplit(name, path, np.ascontiguousarray(h), labels.clone(), list(names), size, prefetch=prefetch)
    return (split("train", d.train_path, hashes[rows[train_at].numpy()], tr_labels[rows[train_at]]),
            split("val", d.train_path, hashes[rows[val_at].numpy()], tr_labels[rows[val_at]]),
            split("test", d.test_path, row_hashes(d.test_path, len(te_labels)), te_labels))


# ---- the pipelines (driver, Ray up) ----------------------------------------------------------

def _select(table, keys: np.ndarray, ids: np.ndarray, labels: np.ndarray, pad: np.ndarray) -> dict:
    """Rows of this pipeline (their row hash among `keys`, sorted), with sample_id/label/real, and a
    second copy (real=False) of the rows whose sample_id is in `pad`."""
    h = table.column("row_hash").to_numpy()
    at = np.searchsorted(keys, h).clip(0, max(len(keys) - 1, 0))
    hit = keys[at] == h if len(keys) else np.zeros(len(h), dtype=bool)
    rows = np.flatnonzero(hit)
    sample = ids[at[rows]]
    img = table.column("img").combine_chunks().field("bytes").take(rows)
    extra = np.flatnonzero(np.isin(sample, pad))
    out_rows = np.concatenate([np.arange(len(rows)), extra])
    import pyarrow as pa
    return {"sample_id": sample[out_rows], "label": labels[at[rows]][out_rows],
            "real": np.arange(len(out_rows)) < len(rows), "img": img.take(pa.array(out_rows))}


def _decode(table, size: int) -> dict:
    from .sources import decode_image_bytes
    blobs = table.column("img").to_pylist()
    images = np.stack([decode_image_bytes(b, f"stream row sample {int(s)}", size).numpy()
                       for b, s in zip(blobs, table.column("sample_id").to_numpy())]) if blobs else \
        np.zeros((0, 3, size, size), dtype=np.uint8)
    return {"sample_id": table.column("sample_id").to_numpy(), "label": table.column("label").to_numpy(),
            "real": table.column("real").to_numpy(zero_copy_only=False), "image": images}


def split_dataset(split: StreamSplit, classes: Optional[Sequence[int]], world_size: int, seed: Optional[int]):
    """The Ray Dataset of one pass: `split`'s samples of `classes` (None: all), padded to a multiple
    of `world_size`, shuffled (reseeded every execution, i.e. every epoch) when `seed` is given."""
    import ray.data
    from ray.data import RandomSeedConfig
    ids = np.arange(len(split.labels), dtype=np.int64)
    if classes is not None:
        ids = ids[np.isin(split.labels.numpy(), np.asarray(list(classes)))]
    pad = ids[: (-len(ids)) % world_size]
    order = np.argsort(split.hashes[ids], kind="stable")
    keys, ids = split.hashes[ids][order], ids[order]
    ds = ray.data.read_parquet(split.path, include_row_hash=True).select_columns(["img", "row_hash"])
    ds = ds.map_batches(_select, batch_format="pyarrow", zero_copy_batch=True,
                        fn_kwargs={"keys": keys, "ids": ids, "labels": split.labels.numpy()[ids], "pad": pad})
    if seed is not None:
        ds = ds.random_shuffle(seed=RandomSeedConfig(seed=int(seed), reseed_after_execution=True))
    return ds.map_batches(_decode, batch_format="pyarrow", batch_size=256, fn_kwargs={"size": split.image_size})


def stream_datasets(train: StreamSplit, val: StreamSplit, test: StreamSplit, class_sets: Sequence[Sequence[int]],
                    world_size: int, seed: int) -> dict:
    """{name: Dataset}: one shuffled pipeline per training class set, plus val and test."""
    out = {}
    for i, classes in enumerate(class_sets):
        name = dataset_name(train.name, classes)
        if name not in out:
            out[name] = split_dataset(train, classes, world_size, seed * 1000 + SHUFFLE_SEED_OFFSET + i)
    out[dataset_name(val.name, None)] = split_dataset(val, None, world_size, None)
    out[dataset_name(test.name, None)] = split_dataset(test, None, world_size, None)
    return out


def stream_stats(train: StreamSplit, samples: int = 2048, seed: int = 0) -> tuple[list, list]:
    """Channel mean/std of a seeded sample of training images (decoding all would defeat streaming)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    from .imageset import channel_stats
    from .parallel import decode_many
    from .sources import decode_image_bytes
    rows_of = {int(h): i for i, h in enumerate(row_hashes(train.path, pads.dataset(train.path).count_rows()))}
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:samples]
    rows = sorted(rows_of[int(h)] for h in train.hashes[pick.numpy()])
    blobs = pads.dataset(train.path).take(pa.array(rows), columns=["img"]).column("img").combine_chunks()
    images = decode_many(blobs.field("bytes").to_pylist(), [f"parquet file {train.path!r} row {r}" for r in rows],
                         partial(decode_image_bytes, size=train.image_size), (3, train.image_size, train.image_size))
    return channel_stats(images)


def decoded_bytes(num_images: int, image_size: int) -> int:
    return int(num_images) * 3 * int(image_size) ** 2


def worker_memory(exp) -> int:
    """Bytes of memory a training worker can count on: this machine's memory shared by its workers
    (a cluster's nodes are assumed alike)."""
    import psutil
    return int(psutil.virtual_memory().total // max(1, exp.ray.workers))


def choose_loader(exp, log: Callable[[str], None], memory: Optional[int] = None) -> str:
    """`data.loader`, with `auto` resolved: stream when the decoded training set would need more
    than `data.memory_fraction` of a worker's memory (and the source can stream)."""
    d = exp.data
    if d.loader != "auto":
        return d.loader
    if d.source not in STREAM_SOURCES:
        log(f"data.loader auto: memory (source {d.source} does not stream)")
        return "memory"
    import pyarrow.parquet as pq
    num_train = pq.ParquetFile(d.train_path).metadata.num_rows
    size = decoded_size(exp.image_size(), exp.augment_preset())   # what memory mode decodes to
    need = decoded_bytes(num_train, size)
    worker = worker_memory(exp) if memory is None else memory
    budget = d.memory_fraction * worker
    loader = "stream" if need > budget and d.source in STREAM_SOURCES else "memory"
    log(f"data.loader auto: {loader} (decoded train set {need / 2**30:.2f} GiB vs "
        f"data.memory_fraction {d.memory_fraction:g} x {worker / 2**30:.1f} GiB per worker)")
    return loader
