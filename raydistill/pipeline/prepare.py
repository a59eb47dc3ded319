"""Everything a run needs before training: validated config, data, class groups, run directory
(`start_run`), and the settings each stage trains with.

Kept separate from training so the local runner, the Ray driver, Tune and the job API all
prepare identically, and so every input error is raised before any cluster work starts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from raydistill.config import ConfigError, Experiment
from raydistill.data import (DataError, ImageSet, center_crop, channel_stats, decoded_size, groups_from_ratio,
                             load_dataset, train_val_split, validate_groups)
from raydistill.data.decoded import load_decoded
from raydistill.data.stream import choose_loader, stream_splits, stream_stats
from raydistill.distill.engine import TrainSettings
from raydistill.storage import RunDir
from raydistill.teachers import check_teacher_checkpoints


@dataclass
class PreparedData:
    train: ImageSet         # or, with data.loader stream, `data.stream.StreamSplit` (an index, no pixels)
    val: ImageSet
    test: ImageSet
    groups: list            # class lists, group-local order
    mean: list
    std: list

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def streaming(self) -> bool:
        return not isinstance(self.train, ImageSet)

def prepare_data(exp: Experiment, log: Optional[Callable[[str], None]] = None) -> PreparedData:
    """Load (decoded shards when an earlier run stored them, see `data.decoded`), split and group
    the data; raise DataError/ConfigError on anything inconsistent. Training images keep the decoded
    square the preset crops from; in memory mode validation and test images are stored as their
    evaluation view (the centre image_size crop), the same for every method (streamed ones are
    centre-cropped by the engine's evaluation)."""
    from raydistill.storage.cachedirs import check_cache_roots
    check_cache_roots(exp)   # a cache root that cannot be one: named here, not a traceback from its lock
    d = exp.data
    size = exp.image_size()
    streaming = choose_loader(exp, log or (lambda _msg: None)) == "stream"
    if streaming:   # indexes of the samples; pixels stay in storage until a pipeline decodes them
        train, val, test = stream_splits(exp)
    else:
        train, test = load_decoded(exp, lambda: load_dataset(
            d.source, root=d.root, train_path=d.train_path, test_path=d.test_path, download=d.download,
            num_classes=d.num_classes if d.source == "builtin" else None, train_per_class=d.train_per_class,
            test_per_class=d.test_per_class, seed=d.seed, limit_per_class=d.limit_per_class,
            size=decoded_size(size, exp.augment_preset())), log)
    try:
        if d.groups is not None:
            groups = validate_groups(d.groups, train.num_classes)
        else:
            groups = groups_from_ratio(train.num_classes, d.ratio)
    except DataError as err:  # name the config field the groups came from
        raise DataError(f"{'data.groups' if d.groups is not None else 'data.ratio'}: {err}") from None
    if len(groups) != exp.num_groups():
        raise ConfigError(f"data.groups: expected {exp.num_groups()} groups, got {len(groups)}")
    if not streaming:
        train, val = train_val_split(train, d.val_fraction, d.seed)
        val, test = (ImageSet(center_crop(s.images, size), s.labels, s.class_names) for s in (val, test))
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    for p, classes in enumerate(groups):
        n = int(counts[classes].sum())
        if n == 0:
            raise DataError(f"class group {p} (classes {classes[:5]}…): no training samples")
        for batch_size, field in ((exp.optimizer.batch_size, "optimizer.batch_size"),
                                  (exp.teachers.batch_size, "teachers.batch_size")):
            if batch_size > n:
                raise ConfigError(f"{field}: expected at most {n} (the training samples in class group {p}, "
                                  f"classes {classes[:5]}), got {batch_size}")
    mean, std = stream_stats(train, seed=d.seed) if streaming else channel_stats(train.images)
    return PreparedData(train, val, test, groups, mean, std)


def input_stats(section, data: PreparedData) -> dict:
    """{mean, std} a network of config `section` (exp.teachers / exp.student) is trained, served and
    saved with: pretrained weights' own statistics unless `normalize` says otherwise, else the data's."""
    from raydistill.models.pretrained import input_normalization
    mean, std = input_normalization(section, data.mean, data.std)
    return {"mean": mean, "std": std}


def student_settings(exp: Experiment, data: PreparedData) -> TrainSettings:
    o, c = exp.optimizer, exp.curriculum
    return TrainSettings(lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, batch_size=o.batch_size,
                         schedule=o.schedule, milestones=tuple(o.milestones), gamma=o.gamma,
                         warmup_fraction=o.warmup_fraction, restart_per_grade=o.restart_per_grade,
                         temperature=c.temperature, alpha=exp.grade_alphas()[-1],
                         losses=exp.loss_params(),
                         carry_head_rows=c.carry_head_rows, keep_momentum=c.keep_momentum, head_relu=c.head_relu,
                         bn_recalibrate=c.bn_recalibrate, test_every_epoch=exp.test_every_epoch,
                         switch=c.switch, patience=c.patience, min_delta=float(c.min_delta),
                         replay=tuple(dict(e) for e in c.replay or ()),
                         augment=exp.augment_preset(), image_size=exp.image_size(), **input_stats(exp.student, data),
                         seed=exp.seed)


def teacher_settings(exp: Experiment, data: PreparedData) -> TrainSettings:
    t, o = exp.teachers, exp.optimizer
    return TrainSettings(lr=t.lr, momentum=o.momentum,
                         weight_decay=o.weight_decay if t.weight_decay is None else t.weight_decay,
                         batch_size=t.batch_size, schedule=t.schedule, milestones=tuple(t.milestones), gamma=o.gamma,
                         warmup_fraction=t.warmup_fraction, label_smoothing=t.label_smoothing,
                         augment=exp.augment_preset(), image_size=exp.image_size(), **input_stats(exp.teachers, data),
                         seed=exp.seed + 1)


def with_absolute_paths(exp: Experiment) -> Experiment:
    """A copy whose local data paths, teacher checkpoint paths and output.dir are absolute: Ray
    workers, Tune trials and Ray Jobs run in another working directory, where a relative path
    would name a different (or no) file. URIs are left as they are."""
    import copy
    from raydistill.storage import absolute

    exp = copy.deepcopy(exp)
    d = exp.data
    d.root, d.train_path, d.test_path = absolute(d.root), absolute(d.train_path), absolute(d.test_path)
    d.cache_dir = absolute(d.cache_dir)
    if exp.teachers.checkpoints:
        exp.teachers.checkpoints = {k: absolute(v) for k, v in exp.teachers.checkpoints.items()}
    exp.output.dir = absolute(exp.output.dir)
    return exp


def check_output_dir(exp: Experiment):
    """The run directory (a `storage.RunDir`) must be creatable and writable before anything trains."""
    from raydistill.storage import RunDir, is_uri, run_location
    location = run_location(exp)
    if not is_uri(location):
        path = Path(location)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output.dir: cannot create run directory {path} ({err.strerror})") from None
        if not os.access(path, os.W_OK):
            raise ConfigError(f"output.dir: run directory {path} is not writable")
        return RunDir(path)
    run = RunDir(location)
    try:
        run.make()
    except OSError as err:   # no such bucket, no permission, endpoint unreachable
        raise ConfigError(f"output.dir: cannot create run directory {location} ({err})") from None
    return run


# What may differ between a run and the command that resumes it: where and how it runs, not what it trains.
RESUMABLE_FIELDS = ("name", "device", "compile", "device_data_fraction", "ray", "output", "tracking",
                    "data.cache_dir", "data.loader", "data.memory_fraction", "data.stream_prefetch")


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b": value} of a nested mapping (teachers.checkpoints kept whole)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key not in ("teachers.checkpoints",):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _resolved(exp: Experiment) -> dict:
    """The config as a dict with the data fields whose null means a default resolved, so `augment:
    true` (older configs), `augment: cifar` and a null that defaults to cifar compare equal."""
    tree = exp.to_dict()
    tree["data"].update(image_size=exp.image_size(), augment=exp.augment_preset())
    return tree


def config_changes(old: Experiment, new: Experiment) -> list[str]:
    """`field: old -> new` for every training-relevant field that differs (ray.*, output.* and the
    like may change on resume)."""
    a, b = (flatten(_resolved(e)) for e in (old, new))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k.split(".")[0] not in RESUMABLE_FIELDS and k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]


def refuse_changed_config(run, exp: Experiment) -> None:
    """A run directory that already holds a run (its config.yaml) is only resumed or re-run with the same
    training config; anything else would mix two experiments' epochs, checkpoints and metrics."""
    from raydistill.storage import join
    run_path, path = run.location, join(run.location, "config.yaml")
    if not run.is_file("config.yaml"):
        return
    from raydistill.config import load_yaml
    try:
        old = Experiment.from_dict(load_yaml(run.read_text("config.yaml")) or {}, source=path)
    except Exception as err:  # unreadable or from an incompatible version: do not guess, do not overwrite
        raise ConfigError(f"{path}: the run directory holds a config that cannot be read ({err}); "
                          f"choose another output.name or remove {run_path}") from None
    changes = config_changes(old, exp)
    if changes:
        raise ConfigError(f"{run_path}: already holds a run with a different config, so resuming it with this one "
                          f"is refused. Changed: {'; '.join(changes)}. Re-run with the original config, or choose "
                          f"another output.name (or remove the directory) to start a new run.")


def write_json(path: Path, payload) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)


def pick_device(exp: Experiment) -> torch.device:
    if exp.device == "cuda" or (exp.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def start_run(exp: Experiment, log: Optional[Callable[[str], None]] = None) -> tuple[PreparedData, RunDir]:
    """Validate, load the data, create the run directory and write config.yaml — before any training."""
    exp.validate()
    data = prepare_data(exp, log)
    check_teacher_checkpoints(exp.teachers.checkpoints, data.groups, exp.teachers.arch)  # before any training
    out = check_output_dir(exp)
    refuse_changed_config(out, exp)
    out.write_text("config.yaml", exp.to_yaml())
    return data, out
