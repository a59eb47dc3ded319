"""`data.loader: stream`: the training data as Ray Data pipelines instead of a decoded copy per worker.

Driver side (no pixels): `stream_splits` reads only the label column, applies the train limit and
the seeded train/val split exactly as memory mode does, and gives every training sample the
`sample_id` it has in memory mode (its position in the training set) and its row in the Parquet
file (a stable id from pyarrow's row-group metadata, no private Ray module), so the soft-label
cache's bank and logits address the same samples in both modes.

Training passes (worker side): the engine cuts a pass into this worker's batches exactly as in
memory mode (`engine.shard_batches`: the permutation of (settings seed, epoch, pass stream), padded
to equal shares with repeats that are trained on but not counted). `StreamSplit.pass_batches` then
builds that pass's pipeline in the worker:

    row groups holding the share's rows -> read their `img` bytes (pyarrow), one row per position
    -> sort by position (encoded rows; spills like a shuffle) -> decode in map_batches (cluster CPUs)

so the batches of epoch e depend on nothing but (seed, epoch, stream, rank): a resumed run, or one
whose earlier stage passed over the same classes, sees what an uninterrupted run sees. (Ray
Data's `random_shuffle` reseeded per execution and `streaming_split`'s first-come block dispatch
could not promise that.) Each worker reads the row groups its share touches, i.e. usually the
whole file: reads grow with the workers, the price of reproducible batches. Crop/flip stays in
the worker (a batched gather on uint8): the soft-label cache replays per-(sample, epoch) draws.

Evaluation (order-free): each worker reads its share of val or test (the samples of the asked
classes, every world_size-th from its rank, as memory mode shares them) through a pipeline of its
own, read and decoded without a sort; the counts are summed over the workers. (The splits were
`TorchTrainer(datasets=...)` through `streaming_split`; those coordinators' executions and the
workers' pass pipelines slowed each other: a 105-image pass took 8-16 s beside them, 0.1 s alone.)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .augment import decoded_size
from .imageset import DataError, first_n_per_class, split_indices

STREAM_SOURCES = ("parquet",)


def row_group_starts(path: str) -> np.ndarray:
    """First file row of each row group of a Parquet file, then its row count (public pyarrow
    metadata; `np.searchsorted` finds the row group of a row). Rows are the samples' stable ids:
    a Parquet file's row order is fixed, and the decoded-shard key changes with the file."""
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(path).metadata
    return np.concatenate([[0], np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])]
                          ).astype(np.int64)


@dataclass
class StreamSplit:
    """One split (train, val or test) as an index: file, file row and label per sample; pixels stay
    in storage. `classes` (None: all) narrows it like `ImageSet.of_classes`. In a worker,
    `all_reduce_sum` and `world_size` come from the Train context (`attach`)."""
    name: str
    path: str
    rows: np.ndarray                    # int64 row in the Parquet file per sample (sample_id = position)
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
    def pass_batches(self, batches: Sequence[tuple]) -> "StreamPass":
        """This worker's batches of one pass as the engine cut them (`engine.shard_batches`: the
        (seed, epoch, stream) permutation, this rank's share, padding), with their pixels streamed:
        (sample_ids, uint8 images, labels, real count) in exactly that order, so the pass depends on
        those arguments alone and not on what this process streamed before."""
        return StreamPass(self, [(torch.as_tensor(ids, dtype=torch.long), int(n)) for ids, n in batches])

    def eval_batches(self, batch_size: int) -> Iterator[tuple]:
        """(uint8 images, labels) of this worker's share of the split (every world_size-th sample of
        `classes`, from its rank, as `engine.eval_batches` shares an in-memory split), in no
        particular order."""
        share = torch.nonzero(self.mask()).flatten()[self.rank::self.world_size].numpy()
        if len(share) == 0:
            return
        for batch in share_dataset(self, share).iter_torch_batches(
                batch_size=batch_size, prefetch_batches=self.prefetch, device="cpu"):
            yield batch["image"], batch["label"]


class StreamPass:
    """One pass's batches for this worker (`StreamSplit.pass_batches`): sized, so the engine knows
    the pass's step count ahead; iterating builds and runs the pass's pipeline (`pass_dataset`)."""

    def __init__(self, split: StreamSplit, batches: list):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple]:
        if not self.batches:
            return
        order = torch.cat([ids for ids, _ in self.batches])
        # every batch but the last has the first one's size, so cutting the ordered stream at that
        # size gives back the batches
        streamed = pass_dataset(self.split, order.numpy()).iter_torch_batches(
            batch_size=len(self.batches[0][0]), prefetch_batches=self.split.prefetch, device="cpu")
        yielded = 0
        for (ids, real), batch in zip(self.batches, streamed):
            if not torch.equal(batch["sample_id"], ids):
                raise RuntimeError(f"stream loader: batch {yielded} of a {self.split.name} pass arrived with other "
                                   f"samples than the pass ordered")
            yield ids, batch["image"], batch["label"], real
            yielded += 1
        if yielded < len(self.batches):
            raise RuntimeError(f"stream loader: a {self.split.name} pass yielded {yielded} of its "
                               f"{len(self.batches)} batches")


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
    prefetch = d.stream_prefetch

    def split(name, path, file_rows, labels):
        return StreamSplit(name, path, np.ascontiguousarray(file_rows, dtype=np.int64), labels.clone(), list(names),
                           size, prefetch=prefetch)
    return (split("train", d.train_path, rows[train_at].numpy(), tr_labels[rows[train_at]]),
            split("val", d.train_path, rows[val_at].numpy(), tr_labels[rows[val_at]]),
            split("test", d.test_path, np.arange(len(te_labels)), te_labels))


# ---- the pipelines (Ray up) --------------------------------------------------------------------

def _read_rows(batch: dict, path: str, starts: np.ndarray, rows: np.ndarray, pos: np.ndarray,
               sample_ids: np.ndarray, labels: np.ndarray) -> dict:
    """Read task: of each row group in `batch["group"]`, the `img` bytes of the wanted file rows
    (`rows`, sorted, each with its position `pos` in the pipeline), with sample_id and label."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    f, at, blobs = pq.ParquetFile(path), [], []
    for g in batch["group"].tolist():
        lo, hi = np.searchsorted(rows, [starts[g], starts[g + 1]]) if g >= 0 else (0, 0)
        if hi == lo:
            continue
        column = f.read_row_group(g, columns=["img"]).column("img").combine_chunks().field("bytes")
        blobs.append(column.take(pa.array(rows[lo:hi] - starts[g])))
        at.append(pos[lo:hi])
    at = np.concatenate(at) if at else np.zeros(0, dtype=np.int64)
    img = pa.concat_arrays(blobs) if blobs else pa.array([], pa.binary())
    by_pos = np.argsort(at, kind="stable")   # this task's rows in pipeline order
    at = at[by_pos]
    return {"pos": at, "sample_id": sample_ids[at], "label": labels[at],
            "img": img.take(pa.array(by_pos))}


READ_TASK_ROWS = 2048   # wanted rows per read task (whole row groups; fewer, larger tasks for small passes)


def _rows_dataset(split: StreamSplit, sample_ids: np.ndarray):
    """The encoded rows of `sample_ids` (repeats allowed; position i is `sample_ids[i]`), read by
    tasks of consecutive row groups that hold any of them, each task's rows in position order (the
    tasks' blocks in no particular order). Returns (dataset, number of read tasks)."""
    import ray.data
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    file_rows = split.rows[sample_ids]
    order = np.argsort(file_rows, kind="stable")
    starts = row_group_starts(split.path)
    groups = np.unique(np.searchsorted(starts, file_rows, side="right") - 1).tolist() or [-1]
    tasks = max(1, min(len(groups), -(-len(sample_ids) // READ_TASK_ROWS)))
    ds = ray.data.from_items([{"group": int(g)} for g in groups], override_num_blocks=tasks)
    return ds.map_batches(_read_rows, batch_size=None, batch_format="numpy", fn_kwargs={
        "path": split.path, "starts": starts, "rows": file_rows[order], "pos": order.astype(np.int64),
        "sample_ids": sample_ids, "labels": split.labels.numpy()[sample_ids]}
    ), tasks


def _decode(table, size: int) -> dict:
    from .image_bytes import decode_image_bytes
    blobs = table.column("img").to_pylist()
    images = np.stack([decode_image_bytes(b, f"stream row sample {int(s)}", size).numpy()
                       for b, s in zip(blobs, table.column("sample_id").to_numpy())]) if blobs else \
        np.zeros((0, 3, size, size), dtype=np.uint8)
    return {"sample_id": table.column("sample_id").to_numpy(), "label": table.column("label").to_numpy(),
            "image": images}


def pass_dataset(split: StreamSplit, sample_ids: np.ndarray):
    """The Ray Dataset of `split`'s samples `sample_ids` (repeats allowed), decoded, in exactly this
    order: rows read per row group, sorted by position (all-to-all on encoded rows) when more than
    one read task read them (one task's rows come in order: a pass of up to READ_TASK_ROWS samples
    skips the sort, which cost ~4 s of a 100-image pass on 2 cores), decoded with the order kept
    (decode tasks finish in any order)."""
    ds, tasks = _rows_dataset(split, sample_ids)
    if tasks > 1:
        ds = ds.sort("pos")
    ds = ds.map_batches(_decode, batch_format="pyarrow", batch_size=256, fn_kwargs={"size": split.image_size})
    ds.context.execution_options.preserve_order = True
    return ds


def share_dataset(split: StreamSplit, sample_ids: np.ndarray):
    """The Ray Dataset of `split`'s samples `sample_ids`, decoded, in no particular order (an
    evaluation share: no sort)."""
    ds, _ = _rows_dataset(split, sample_ids)
    return ds.map_batches(_decode, batch_format="pyarrow", batch_size=256, fn_kwargs={"size": split.image_size})


def stream_stats(train: StreamSplit, samples: int = 2048, seed: int = 0) -> tuple[list, list]:
    """Channel mean/std of a seeded sample of training images (decoding all would defeat streaming)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    from .imageset import channel_stats
    from .parallel import decode_many
    from .image_bytes import decode_image_bytes
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))[:samples]
    rows = sorted(int(r) for r in train.rows[pick.numpy()])
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
