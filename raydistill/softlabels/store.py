"""The Parquet store: one file per teacher, rows keyed by (sample, draw, teacher).

Columns: `sample` int32 (position in the training set), `draw` int16, `teacher` dictionary
string, then either `logits` fixed_size_list<halffloat>[classes] (format float16) or
`topk_values` fixed_size_list<halffloat>[k], `topk_indices` fixed_size_list<int16>[k] and
`rest_logmeanexp` halffloat (format topk). `meta.json` holds the key and its components.

A cache directory is written under a temporary name and renamed into place only when complete,
so an interrupted build never leaves a directory that looks valid.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydistill.storage.cachedirs import META_FILE, incomplete, manifest

FLOAT16_MAX = 65504.0


class SoftLabelCacheError(RuntimeError):
    """A cache directory that cannot be used; the message names the file and what was expected."""


@dataclass
class TeacherLabels:
    """One teacher's outputs for the training samples of its classes, for every draw of the bank.

    topk: `values`/`indices` hold the k largest logits; every other class is given `rest`, the
    log-mean-exp of the logits not kept at the cache's temperature T, T·log(mean(exp(z/T))). The
    softmax at T of the reconstruction then keeps the top-k probabilities and the total tail mass
    exactly and spreads the tail evenly (a plain mean would underestimate the tail's mass)."""
    samples: torch.Tensor                   # int64 [n], ascending training-set positions
    num_classes: int
    values: torch.Tensor                    # float16 [n, A, C] (float16) or [n, A, k] (topk)
    indices: Optional[torch.Tensor] = None  # int16 [n, A, k] (topk)
    rest: Optional[torch.Tensor] = None     # float16 [n, A] (topk)

    @property
    def num_draws(self) -> int:
        return int(self.values.shape[1])

    def logits(self, index: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """float32 [B, classes] for samples `index` (training-set positions) at draws `draw`."""
        rows = torch.searchsorted(self.samples, index).clamp_(max=len(self.samples) - 1)
        found = self.samples[rows] == index
        if not bool(found.all()):
            missing = index[~found][:5].tolist()
            raise SoftLabelCacheError(f"soft-label cache: no logits for training samples {missing} "
                                      f"(this teacher's cache covers {len(self.samples)} samples of its classes)")
        values = self.values[rows, draw].float()
        if self.indices is None:
            return values
        out = self.rest[rows, draw].float()[:, None].repeat(1, self.num_classes)
        return out.scatter_(1, self.indices[rows, draw].long(), values)


def encode(samples: torch.Tensor, logits: torch.Tensor, fmt: str, topk: int, temperature: float = 1.0) -> TeacherLabels:
    """TeacherLabels from float32 logits [n, A, C] in the storage format (topk: the tail is exact
    in mass at `temperature`, the KD temperature the cache is replayed at)."""
    c = logits.shape[2]
    peak = float(logits.abs().max()) if logits.numel() else 0.0
    if not peak <= FLOAT16_MAX:
        raise SoftLabelCacheError(f"soft-label cache: teacher logits reach {peak:.3g}, beyond float16 "
                                  f"(max {FLOAT16_MAX:.0f}); expected a trained teacher's logits")
    if fmt == "float16":
        return TeacherLabels(samples, c, logits.half())
    k = min(topk, c)
    top = logits.topk(k, dim=2)
    if k < c:
        tail = logits.scatter(2, top.indices, float("-inf")) / temperature
        rest = temperature * (torch.logsumexp(tail, dim=2) - math.log(c - k))
    else:
        rest = top.values[..., -1]
    return TeacherLabels(samples, c, top.values.half(), top.indices.to(torch.int16), rest.half())


def concat(parts: list) -> TeacherLabels:
    """One TeacherLabels from chunks over disjoint, ascending sample ranges."""
    cat = (lambda name: None if getattr(parts[0], name) is None
           else torch.cat([getattr(p, name) for p in parts]))
    return TeacherLabels(cat("samples"), parts[0].num_classes, cat("values"), cat("indices"), cat("rest"))


# ---- Parquet ----------------------------------------------------------------------------------

def _fixed(values: torch.Tensor) -> pa.Array:
    n, a, width = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).numpy()), width)


def to_table(key: str, labels: TeacherLabels) -> pa.Table:
    n, a = labels.values.shape[:2]
    columns = {
        "sample": pa.array(np.repeat(labels.samples.numpy().astype(np.int32), a)),
        "draw": pa.array(np.tile(np.arange(a, dtype=np.int16), n)),
        "teacher": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n * a, dtype=np.int8)), [key]),
    }
    if labels.indices is None:
        columns["logits"] = _fixed(labels.values)
    else:
        columns["topk_values"] = _fixed(labels.values)
        columns["topk_indices"] = _fixed(labels.indices)
        columns["rest_logmeanexp"] = pa.array(labels.rest.reshape(-1).numpy())
    table = pa.table(columns)
    return table.replace_schema_metadata({"raydistill.num_classes": str(labels.num_classes)})


def _column(table: pa.Table, name: str, dtype) -> np.ndarray:
    """[rows, width] numpy array of a fixed-size-list column (width 1 for a scalar column)."""
    column = table.column(name).combine_chunks()
    width = 1
    if pa.types.is_fixed_size_list(column.type):
        width, column = column.type.list_size, column.flatten()
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(table), width)


def from_table(table: pa.Table, num_draws: int, path: Path) -> TeacherLabels:
    """TeacherLabels from a table written by `to_table` (rows in any order); checks every
    (sample, draw) pair is present exactly once."""
    try:
        num_classes = int(table.schema.metadata[b"raydistill.num_classes"])
        sample = table.column("sample").to_numpy().astype(np.int64)
        draw = table.column("draw").to_numpy().astype(np.int64)
    except (KeyError, TypeError) as err:
        raise SoftLabelCacheError(f"soft-label cache file {path}: not written by raydistill ({err})") from None
    samples = np.unique(sample)
    slot = np.searchsorted(samples, sample) * num_draws + draw
    if len(table) != len(samples) * num_draws or (draw >= num_draws).any() \
            or (np.bincount(slot, minlength=len(table)) != 1).any():
        raise SoftLabelCacheError(f"soft-label cache file {path}: expected every sample once per draw "
                                  f"0..{num_draws - 1}, got {len(table)} rows for {len(samples)} samples")

    def field(name, dtype):
        raw = _column(table, name, dtype)
        values = np.empty_like(raw)
        values[slot] = raw
        return torch.from_numpy(values.reshape(len(samples), num_draws, -1))

    if "logits" in table.column_names:
        return TeacherLabels(torch.from_numpy(samples), num_classes, field("logits", np.float16))
    return TeacherLabels(torch.from_numpy(samples), num_classes, field("topk_values", np.float16),
                         field("topk_indices", np.int16), field("rest_logmeanexp", np.float16)[..., 0])


# ---- cache directories ------------------------------------------------------------------------

def write_cache(directory: Path, key: str, components: dict, labels: dict, build_seconds: float) -> int:
    """Write `<directory>/<teacher>.parquet` + meta.json (its manifest lists every file and its size)
    atomically; returns the bytes written. If `directory` is a complete cache already (a builder that
    did not take the key's lock finished first), it is kept and ours discarded."""
    directory = Path(directory)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        files = {}
        for name, lab in labels.items():
            pq.write_table(to_table(name, lab), tmp / f"{name}.parquet")
            files[name] = {"file": f"{name}.parquet", "samples": len(lab.samples),
                           "bytes": (tmp / f"{name}.parquet").stat().st_size}
        meta = {"key": key, **components, "files": files, "build_seconds": build_seconds, "manifest": manifest(tmp)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if incomplete(directory) is None:
            shutil.rmtree(tmp)                   # a concurrent build of the same key won
        else:
            shutil.rmtree(directory, ignore_errors=True)   # a partial leftover is not a cache
            try:
                os.rename(tmp, directory)
            except OSError:   # a builder without the lock (flock not shared by this mount) won the race
                if incomplete(directory) is not None:
                    raise
                shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache_bytes(directory)


def cache_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*.parquet"))


def read_meta(directory: Path) -> Optional[dict]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SoftLabelCacheError(f"soft-label cache file {path}: not valid JSON ({err})") from None


def read_labels(directory: Path, meta: dict) -> dict:
    """{teacher: TeacherLabels} of a complete cache directory."""
    labels = {}
    for name, info in meta["files"].items():
        path = Path(directory) / info["file"]
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as err:
            raise SoftLabelCacheError(f"soft-label cache file {path}: cannot be read ({err})") from None
        labels[name] = from_table(table, meta["bank"]["draws"], path)
    return labels
