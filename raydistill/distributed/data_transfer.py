"""The prepared data on its way to workers: packed once into the object store by the driver
(numpy arrays, zero-copy reads), unpacked by each worker; streamed splits travel as indexes and
each worker streams the pixels it needs (`data.stream`)."""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from raydistill.data import ImageSet
from raydistill.data.stream import StreamSplit
from raydistill.distill.engine import TrainContext
from raydistill.pipeline.prepare import PreparedData


def pack_data(data: PreparedData) -> dict:
    """numpy arrays (zero-copy reads from the object store) of the prepared data; streamed splits
    travel as they are (indexes: each worker streams their pixels)."""
    sets = {name: s if data.streaming else (s.images.numpy(), s.labels.numpy(), s.class_names)
            for name, s in (("train", data.train), ("val", data.val), ("test", data.test))}
    return {"sets": sets, "groups": data.groups, "mean": data.mean, "std": data.std}


def unpack_data(packed: dict, ctx: Optional[TrainContext] = None) -> PreparedData:
    """The PreparedData of a worker; streamed splits are attached to the worker's collectives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only object-store buffers; never written
        sets = {name: s.attach(ctx.rank, ctx.world_size, lambda t: ctx.all_reduce_sum(t.to(ctx.device)).cpu())
                if isinstance(s, StreamSplit) else ImageSet(torch.from_numpy(s[0]), torch.from_numpy(s[1]), s[2])
                for name, s in packed["sets"].items()}
    return PreparedData(sets["train"], sets["val"], sets["test"], packed["groups"], packed["mean"], packed["std"])
