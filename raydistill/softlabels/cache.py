"""`ensure_soft_label_cache`: load the cache whose key matches these teachers, data and bank, or
build and store it. Called once per run (and by a search once before its trials); every later
run with the same teachers, data and bank only reads it. One process builds a key at a time
(`cachedirs.build_lock`): stages that need the same key at once wait and reuse it."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from raydistill.storage.cachedirs import build_lock, incomplete, local_cache_dir, mirror, mirror_dir, publish
from raydistill.softlabels.bank import AugmentationBank, bank_for
from raydistill.softlabels.build import build_labels, ray_task_options
from raydistill.softlabels.client import CachedTeachers
from raydistill.softlabels.key import bank_fingerprint, cache_key, dataset_fingerprint, teacher_fingerprint
from raydistill.softlabels.store import SoftLabelCacheError, cache_bytes, read_labels, read_meta, write_cache
from raydistill.storage import is_uri, join


@dataclass
class SoftLabelCache:
    directory: Path
    key: str
    bank: AugmentationBank
    labels: dict                        # {teacher key: TeacherLabels}
    bytes: int                          # Parquet bytes on disk
    build_seconds: Optional[float]      # None when it was loaded, not built

    def client(self) -> CachedTeachers:
        return CachedTeachers(self.bank, self.labels)

    @property
    def samples(self) -> int:
        """(sample, teacher) pairs stored, each with every draw."""
        return sum(len(lab.samples) for lab in self.labels.values())


def cache_root(exp) -> str:
    """`teachers.cache_dir`, else `<output.dir>/softlabels` (next to the run directories, so every
    run and trial under one output.dir shares it). A local path or a storage URI."""
    return exp.teachers.cache_dir or join(exp.output.dir, "softlabels")


def ensure_soft_label_cache(exp, data, teachers: dict, *, root: Optional[Path] = None,
                            log: Optional[Callable[[str], None]] = None) -> SoftLabelCache:
    """The cache for `teachers` ({key: FrozenTeacher}) on `data.train` (PreparedData): loaded when
    `<root>/<key[:16]>` holds a complete cache with this key, else built (Ray tasks when Ray is
    initialised and has room, else in this process) and written atomically."""
    log = log or (lambda _msg: None)
    t = exp.teachers
    train = data.train
    bank = bank_for(exp, len(train))
    topk = t.cache_format == "topk"
    temperature = exp.curriculum.temperature if topk else None    # the topk tail is exact at this T only
    storage = {"format": t.cache_format, "topk": t.cache_topk if topk else None, "temperature": temperature}
    prints = {k: {"fingerprint": teacher_fingerprint(v), "classes": v.class_ids} for k, v in teachers.items()}
    key, components = cache_key(prints, dataset_fingerprint(train.images, train.labels),
                                {**bank.params(), "sha256": bank_fingerprint(bank, train.images)}, storage)
    root = root or cache_root(exp)
    name = key[:16]
    cache = _load(local_cache_dir(root, name, log), key, bank, None)
    if cache is None:
        with build_lock(mirror_dir(root, name), log):   # one builder per key; the others wait, then load
            directory = mirror(root, name, log)
            cache = _load(directory, key, bank, log)
            if cache is None:
                return _build(exp, train, teachers, bank, key, components, storage, root, directory, log)
    if is_uri(root):   # a copy built here whose upload did not finish: the other nodes need it stored
        publish(root, cache.directory)
    log(f"soft labels: cache {cache.directory} ({len(teachers)} teachers, {bank.num_draws} draws) loaded")
    return cache


def _load(directory: Path, key: str, bank: AugmentationBank, log) -> Optional[SoftLabelCache]:
    """The complete cache with this key in `directory`, else None (with `log`: an unreadable one is
    reported, and it will be rebuilt)."""
    if incomplete(directory) is not None:
        return None
    try:
        meta = read_meta(directory)
        if meta.get("key") != key:
            return None
        return SoftLabelCache(directory, key, bank, read_labels(directory, meta), cache_bytes(directory), None)
    except SoftLabelCacheError as err:
        if log:
            log(f"soft labels: {err}; rebuilding")
        return None


def _build(exp, train, teachers: dict, bank: AugmentationBank, key: str, components: dict, storage: dict,
           root, directory: Path, log) -> SoftLabelCache:
    """Compute, write and (for a URI root) publish the cache; the caller holds the key's lock."""
    t = exp.teachers
    temperature = storage["temperature"]
    shutil.rmtree(directory, ignore_errors=True)   # incomplete, unreadable or another key's: not a cache
    options = ray_task_options(exp.ray.teacher_cpus, exp.ray.teacher_gpus, exp.ray.teacher_resources)
    log(f"soft labels: building cache {directory} ({len(teachers)} teachers x {bank.num_draws} draws, "
        f"{t.cache_format}, {'Ray tasks' if options else 'in this process'})")
    started = time.perf_counter()
    labels = build_labels(teachers, train.images, train.labels, bank, t.cache_format, t.cache_topk, options,
                          temperature=temperature or 1.0)
    seconds = time.perf_counter() - started
    size = write_cache(directory, key, components, labels, seconds)
    if is_uri(root):   # into the run's storage, where the other nodes and later runs find it
        publish(root, directory)
    log(f"soft labels: built in {seconds:.1f} s, {size / 1e6:.2f} MB")
    return SoftLabelCache(directory, key, bank, labels, size, seconds)


def load_soft_label_cache(directory: Path) -> SoftLabelCache:
    """A complete cache directory by path (Ray workers other than rank 0 load what rank 0 ensured,
    so teachers that differ in the last bit across ranks cannot split the key)."""
    directory = Path(directory)
    problem = incomplete(directory)
    if problem is not None:
        raise SoftLabelCacheError(f"soft-label cache {directory}: expected a complete cache ({problem})")
    meta = read_meta(directory)
    bank = AugmentationBank.from_params(meta["bank"])
    return SoftLabelCache(directory, meta["key"], bank, read_labels(directory, meta), cache_bytes(directory), None)
