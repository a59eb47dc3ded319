"""The stage bodies every executor runs: train or load a teacher (`teacher_stage`), train one
method's plan (`method_stage`). Plain PyTorch and a `RunDir`: the executor only chooses the `train`
callable that runs a plan (in this process, `local_train`; a Ray Train worker's with DDP and epoch
checkpoints) and where teachers are served. Every file goes through a `storage.RunDir` (a local
directory or a URI), written by the process that produced it.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Callable, Optional

import torch

from raydistill.config import Experiment
from raydistill.data import center_crop
from raydistill.data.stream import StreamSplit
from raydistill.distill.budget import history_budget, plan_flops_per_image
from raydistill.distill.curriculum import Plan, plan_for, teachers_needed
from raydistill.distill.engine import TrainContext, train_plan
from raydistill.models import count_parameters
from raydistill.pipeline.prepare import PreparedData, input_stats, student_settings, teacher_settings
from raydistill.pipeline.progress import interactive
from raydistill.pipeline.summary import method_summary
from raydistill.storage import RunDir
from raydistill.teachers import FrozenTeacher, classes_of, load_teacher, teacher_checkpoint
from raydistill.teachers.training import teacher_plan

# train(plan, train_set, val_set, test_set, teacher_client, settings, log=None, stage=None) -> (model, history)
# stage: "teacher:<key>" or "method:<method>", the name live metrics and the progress bar show
TrainFn = Callable[..., tuple]


def teacher_classes(key: str, data: PreparedData) -> list:
    return classes_of(key, data.groups)


def local_train(device, exp: Optional[Experiment] = None, out: Optional[RunDir] = None, checkpoints=None,
                **context) -> TrainFn:
    """`context`: TrainContext options (`Experiment.context_options()`). With `exp` and `out`, every
    epoch goes to the live trackers (`tracking.LiveMetrics`); on a terminal a bar replaces the lines.
    `checkpoints` (`pipeline.local.LocalCheckpoints`): a stage begun before resumes at its most
    advanced epoch checkpoint, and every epoch is checkpointed as a Ray worker's is."""
    ctx = TrainContext(device=device, **context)

    def train(plan, train_set, val_set, test_set, client, settings, log=None, stage=None):
        resume = checkpoints.resume(stage) if checkpoints is not None and stage else None
        with ExitStack() as stack:
            on_epoch = epoch_watchers(stack, exp, out, stage or plan.method, plan, log, bar=interactive())

            def on_epoch_end(metrics, make_state):
                on_epoch(metrics)   # before the checkpoint: a crash may repeat an epoch there, never drop one
                if checkpoints is not None and stage:
                    checkpoints.epoch(stage, make_state())
            return train_plan(plan, train_set, val_set, test_set, client, settings, ctx, resume=resume,
                              on_epoch_end=on_epoch_end, progress=None if on_epoch.bar else log)
    return train


def epoch_watchers(stack: ExitStack, exp: Optional[Experiment], out: Optional[RunDir], stage: str, plan, log,
                   bar: bool) -> Callable[[dict], None]:
    """The callable rank 0 runs after each epoch of `stage`: live metrics (when `exp` is given) and, with
    `bar` and a log to show, the terminal progress bar (its `.bar` attribute; None when lines are kept).
    Both are closed by `stack`."""
    from raydistill.pipeline.progress import StageBar
    from raydistill.pipeline.tracking import LiveMetrics, stage_label
    live = stack.enter_context(LiveMetrics(exp, out, stage)) if exp is not None and out is not None else None
    shown = StageBar(stage_label(stage), plan.total_epochs, len(plan.grades)) if bar and log else None
    if shown is not None:
        stack.callback(shown.close)

    def on_epoch(metrics: dict) -> None:
        if live is not None:
            live.log(metrics)
        if shown is not None:
            shown.update(metrics)
    on_epoch.bar = shown
    return on_epoch


def teacher_stage(exp: Experiment, data: PreparedData, out: RunDir, key: str, device, log,
                  train: Optional[TrainFn] = None, write: bool = True) -> tuple[FrozenTeacher, dict]:
    """Load the configured checkpoint of teacher `key`, or train it; save it under out/teachers.
    `write=False` (Ray workers other than rank 0) skips the file writes."""
    classes = teacher_classes(key, data)
    name = f"teachers/{key}.pt"
    given = (exp.teachers.checkpoints or {}).get(key)
    started = time.perf_counter()
    if given:
        teacher = load_teacher(given, classes, expected_arch=exp.teachers.arch, device=device,
                               **exp.serving_options())
        source = str(given)
        if write:
            out.save_torch(name, teacher_checkpoint(teacher.model, teacher.mean, teacher.std))
    else:
        log(f"training teacher {key} ({exp.teachers.arch}, {len(classes)} classes, {exp.teachers.epochs} epochs)")
        train = train or local_train(device, exp, out if write else None, **exp.context_options())
        # no per-epoch test evaluation: a teacher's history is not kept, its test accuracy is measured below
        subsets = [data.train.of_classes(classes), data.val.of_classes(classes), None]
        plan = teacher_plan(exp.teachers.arch, classes, exp.teachers.epochs, exp.teachers.pretrained)
        model, _ = train(plan, *subsets, None, teacher_settings(exp, data), log=log, stage=f"teacher:{key}")
        stats = input_stats(exp.teachers, data)   # what it was trained with: saved and served with it
        if write:
            out.save_torch(name, teacher_checkpoint(model, stats["mean"], stats["std"]))
        teacher = FrozenTeacher(model, stats["mean"], stats["std"], device=device, **exp.serving_options())
        source = "trained"
    info = {"arch": teacher.model.arch, "classes": len(classes), "source": source,
            "params": count_parameters(teacher.model), "seconds": time.perf_counter() - started,
            "test_acc": _accuracy(teacher, data.test.of_classes(classes), exp.image_size())}
    log(f"teacher {key}: test accuracy on its {len(classes)} classes {info['test_acc']:.3f}")
    return teacher, info


def prepare_teachers(exp: Experiment, data: PreparedData, out: RunDir, device, log) -> tuple[dict, dict]:
    """Every teacher the methods need: {key: FrozenTeacher}, {key: info}."""
    frozen, info = {}, {}
    for key in teachers_needed(exp.methods, len(data.groups), exp.all_teacher_weights()):
        frozen[key], info[key] = teacher_stage(exp, data, out, key, device, log)
    return frozen, info


def _accuracy(teacher, test, image_size: Optional[int] = None) -> float:
    """Top-1 accuracy of `teacher` on `test`, on the evaluation view every accuracy uses (the
    engine's `evaluate`): the centre image_size crop. Streamed test images arrive as decoded (e.g.
    256 px for image_size 224 with the imagenet preset), so they are cropped here; in-memory ones
    were stored cropped (the crop is then a no-op)."""
    ids = torch.tensor(teacher.class_ids)
    if isinstance(test, StreamSplit):   # every worker counts its share, then all sum
        counts = torch.zeros(2, dtype=torch.float64)
        for images, labels in test.eval_batches(512):
            predicted = ids[teacher(center_crop(images, image_size)).argmax(1)]
            counts += torch.tensor([float((predicted == labels).sum()), len(labels)], dtype=torch.float64)
        counts = test.all_reduce_sum(counts)
        return counts[0].item() / max(counts[1].item(), 1.0)
    correct = sum(int((ids[teacher(center_crop(test.images[i:i + 512], image_size)).argmax(1)]
                       == test.labels[i:i + 512]).sum())
                  for i in range(0, len(test), 512))
    return correct / max(len(test), 1)


def method_stage(exp: Experiment, data: PreparedData, out: RunDir, method: str, client, log,
                 train: TrainFn, write: bool = True, wall_offset: float = 0.0) -> tuple[list, dict]:
    """Train one method's plan; save its final model under out/checkpoints. Returns (history, summary)."""
    plan: Plan = plan_for(method, exp, data.groups)
    if not plan.distils:
        from raydistill.softlabels import teacherless_client
        client = teacherless_client(exp, data.train, client)   # scratch: no teacher calls; cache on: the same bank
    started = time.perf_counter()
    model, history = train(plan, data.train, data.val, data.test, client, student_settings(exp, data), log=log,
                           stage=f"method:{method}")
    wall = wall_offset + time.perf_counter() - started
    if write:
        save_student(out, f"checkpoints/{method}.pt", model, data, input_stats(exp.student, data))
    budget = history_budget(plan, history, plan_flops_per_image(plan, exp.image_size()))
    return history, method_summary(plan, history, count_parameters(model), wall, budget)


def save_student(out: RunDir, name: str, model, data: PreparedData, stats: Optional[dict] = None) -> None:
    """`stats`: the {mean, std} the student was trained with (`pipeline.prepare.input_stats`); default the data's."""
    stats = stats or {"mean": data.mean, "std": data.std}
    out.save_torch(name, {"arch": model.arch, "class_ids": model.class_ids.tolist(),
                          "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                          "mean": list(stats["mean"]), "std": list(stats["std"])})


