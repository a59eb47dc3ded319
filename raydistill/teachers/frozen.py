"""A frozen teacher: uint8 images in, logits over its own classes out; and its checkpoint file.

A teacher normalises its own input, so callers (the engine, Ray actors, the soft-label cache)
ship raw uint8 batches, the cheapest thing to move.
"""
from __future__ import annotations

import pickle
from typing import Any, Sequence

import torch
import torch.nn as nn

from raydistill.data import normalize
from raydistill.distill.precision import Precision
from raydistill.models import build_model, check_arch
from raydistill.teachers.serving import fold_batchnorm


class TeacherError(ValueError):
    """A teacher checkpoint that cannot serve the requested classes."""


class FrozenTeacher:
    """Eval-mode model plus the normalisation it was trained with.

    `model` keeps the network as trained (its state_dict is what is saved and fingerprinted);
    logits come from a copy prepared for inference: BatchNorm folded (`fold_bn`) and weights and
    inputs in channels_last layout (`channels_last`), 1.3-1.4x faster on CPU for CIFAR ResNets;
    forwards in the student's `precision` (autocast), optionally through `torch.compile`."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], device="cpu",
                 fold_bn: bool = True, channels_last: bool = True, precision: str = "fp32", compile: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.mean, self.std = tuple(mean), tuple(std)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = (fold_batchnorm(self.model) if fold_bn else self.model).to(memory_format=self.memory_format)
        if compile:
            self.net = torch.compile(self.net)
        self.amp = Precision(precision, self.device)

    @property
    def class_ids(self) -> list:
        return self.model.class_ids.tolist()

    @torch.inference_mode()
    def device_logits(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """float logits on the teacher's device (an in-process student on that device uses them as is)."""
        x = normalize(images_uint8, self.mean, self.std).to(self.device, memory_format=self.memory_format)
        return self.amp.forward(self.net, x).float()

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.device_logits(images_uint8).cpu()


class LocalTeachers:
    """TeacherClient that runs the teachers in this process (debugging, benchmark reference)."""

    def __init__(self, teachers: dict):
        self.teachers = teachers

    def submit(self, key: str, images: torch.Tensor) -> Any:
        return self.teachers[key].device_logits(images)   # no round trip through host memory

    def fetch(self, handle: Any) -> torch.Tensor:
        return handle


def teacher_checkpoint(model: nn.Module, mean, std, **extra) -> dict:
    """Plain tensors and builtins only, so it loads with torch.load(weights_only=True)."""
    return {"arch": model.arch, "class_ids": model.class_ids.tolist(), "mean": list(mean), "std": list(std),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}


def save_teacher(path, model: nn.Module, mean, std, **extra) -> None:
    """Write a teacher checkpoint to a local path or a storage URI."""
    from raydistill.storage import split
    store, name = split(path)
    store.save_torch(name, teacher_checkpoint(model, mean, std, **extra))


def load_teacher(path, expected_classes: Sequence[int] | None = None, device="cpu",
                 expected_arch: str | None = None, **serving) -> FrozenTeacher:
    """Load a teacher checkpoint, checking it serves exactly `expected_classes` (in that order)
    and, when given, that it is an `expected_arch` network. `serving`: FrozenTeacher's fold_bn,
    channels_last, precision, compile."""
    from raydistill.storage import split
    store, name = split(path)
    if not store.is_file(name):
        raise TeacherError(f"teacher checkpoint {path}: file not found")
    try:
        ckpt = store.load_torch(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: the file holds code, never run it
        raise TeacherError(f"teacher checkpoint {path}: holds Python objects beyond tensors and plain values "
                           f"(pickled code), refused; expected a file written by save_teacher") from None
    except Exception as err:  # truncated or not a torch file
        raise TeacherError(f"teacher checkpoint {path}: cannot be read, expected a file written by save_teacher "
                           f"(truncated or not a torch file? {type(err).__name__}: {err})") from None
    missing = {"arch", "class_ids", "mean", "std", "state_dict"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise TeacherError(f"teacher checkpoint {path}: not a raydistill teacher (missing {sorted(missing)})")
    try:
        check_arch(ckpt["arch"], staged=False)
    except ValueError as err:
        raise TeacherError(f"teacher checkpoint {path}: architecture {ckpt['arch']!r} cannot be built ({err})") \
            from None
    if expected_arch is not None and ckpt["arch"] != expected_arch:
        raise TeacherError(f"teacher checkpoint {path}: architecture {ckpt['arch']!r}, expected {expected_arch!r}")
    classes = list(ckpt["class_ids"])
    if expected_classes is not None and classes != list(expected_classes):
        raise TeacherError(f"teacher checkpoint {path}: trained for {len(classes)} classes {_short(classes)}, "
                           f"expected {len(expected_classes)} classes {_short(expected_classes)}")
    model = build_model(ckpt["arch"], len(classes))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise TeacherError(f"teacher checkpoint {path}: weights do not fit {ckpt['arch']} "
                           f"with {len(classes)} classes ({str(err).splitlines()[0]})") from None
    return FrozenTeacher(model, ckpt["mean"], ckpt["std"], device=device, **serving)


def classes_of(key: str, groups: Sequence[Sequence[int]]) -> list:
    """Global class ids a teacher serves, in its output order: `all` or `group<p>`."""
    if key == "all":
        return [c for g in groups for c in g]
    return list(groups[int(key.removeprefix("group"))])


def check_teacher_checkpoints(checkpoints: dict | None, groups: Sequence[Sequence[int]],
                              expected_arch: str | None) -> None:
    """Every configured `teachers.checkpoints` file loads and serves its teacher's classes: what
    `run` and `validate` both check before any training or cluster work."""
    keys = [f"group{p}" for p in range(len(groups))] + ["all"]
    for key, path in (checkpoints or {}).items():
        if key not in keys:
            raise TeacherError(f"teachers.checkpoints: unknown teacher {key!r}, expected group0..group"
                               f"{len(groups) - 1} or all")
        load_teacher(path, classes_of(key, groups), expected_arch=expected_arch)


def saved_teachers(run_dir, num_groups: int) -> dict:
    """{key: location} of the teacher files an earlier attempt of a run left in `<run_dir>/teachers`
    (`run_dir`: a RunDir, a local path or a URI)."""
    from raydistill.storage import RunDir, join
    out = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    keys = [f"group{p}" for p in range(num_groups)] + ["all"]
    return {k: join(out.location, f"teachers/{k}.pt") for k in keys if out.is_file(f"teachers/{k}.pt")}


def _short(ids) -> str:
    ids = list(ids)
    return str(ids) if len(ids) <= 6 else f"[{ids[0]}, {ids[1]}, …, {ids[-1]}]"
