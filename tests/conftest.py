"""Shared fixtures: tiny built-in data, and one Ray instance per test session (started lazily)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Train's controller polls its workers every 2 s, so a fit noticed its workers' end (or death)
# up to 2 s late; a test's fits are seconds long (a bare fit: 9-12 s -> ~9 s). Ray Train passes
# this on to the controllers of this process's fits and of the subprocesses' runs.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def pytest_collection_modifyitems(config, items):
    """Tests that use a Ray instance (the `ray_session` or `ray_head` fixture) are `slow` even when
    their own mark was forgotten, so the fast tier (-m "not slow and not cluster") never starts Ray;
    tests marked `gpu` are skipped where torch sees no CUDA device."""
    for item in items:
        if {"ray_session", "ray_head"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_data():
    """PreparedData of a small built-in set: 6 classes in 3 groups, ~50 train images per class."""
    from raydistill.config import Experiment
    from raydistill.pipeline.prepare import prepare_data
    exp = tiny_experiment("/tmp/unused")
    return prepare_data(exp)


def first_per_class(data, train: int, val=None, test=None):
    """`data` (PreparedData) with only the first `train` (`val`, `test`: None keeps all) samples of
    each class in each split: for tests whose claims hold at any size."""
    from dataclasses import replace
    from raydistill.data.imageset import first_n_per_class
    return replace(data, **{name: split.subset(first_n_per_class(split.labels, n))
                            for name, split, n in (("train", data.train, train), ("val", data.val, val),
                                                   ("test", data.test, test)) if n is not None})


def tiny_experiment(output_dir, **overrides) -> "Experiment":
    from raydistill.config import Experiment
    exp = Experiment.from_dict({
        "name": "tiny", "seed": 0, "methods": ["ed"],
        "data": {"source": "builtin", "num_classes": 6, "train_per_class": 150, "test_per_class": 100,
                 "ratio": "1:1:1", "val_fraction": 0.1},
        "teachers": {"arch": "resnet8", "epochs": 4, "batch_size": 32, "lr": 0.05},
        "student": {"arch": "resnet8"},
        "curriculum": {"splits": [1, 2, 3], "grade_epochs": [2, 2, 2], "head_widths": 16, "pass_mode": "mixed"},
        "optimizer": {"lr": 0.05, "batch_size": 32},
        "output": {"dir": str(output_dir)},
    })
    return exp.with_overrides([f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": never join a cluster another test (or process) left running on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}},
                 # idle worker processes (most have imported torch) are kept for the next task of
                 # their kind: Ray's default kills those above num_cpus after 1 s idle, and the
                 # suite's tests, one after another, then start new ones (~2 s of CPU each)
                 _system_config={"num_workers_soft_limit": 8, "idle_worker_killing_time_threshold_ms": 120_000})
    yield ray
    ray.shutdown()


def saved_test_accuracy(path, data) -> float:
    """Test accuracy of a saved student checkpoint, evaluated here in one process (eval mode)."""
    from raydistill.distill.engine import TrainContext, TrainSettings, evaluate
    from raydistill.models import build_model
    ckpt = torch.load(path, weights_only=True)
    model = build_model(ckpt["arch"], len(ckpt["class_ids"]))
    model.load_state_dict(ckpt["state_dict"])
    s = TrainSettings(mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]))
    return evaluate(model, data.test, ckpt["class_ids"], s, TrainContext())
