"""`run(experiment)`: teachers, then ED and the baselines, then the results table and run directory.

This is the in-process backend (one worker, teachers in this process). The Ray backend
(`raydistill.distributed.trainer`) shares every piece here — `start_run`, `teacher_stage`,
`method_stage`, `write_metrics`, `finish_run` — and differs only in the `train` callable that
runs a plan (DDP workers, epoch checkpoints, resume) and in where teachers are served.
Every file goes through a `storage.RunDir` (a local directory or a URI), written by the
process that produced it.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from raydistill.storage import RunDir
from raydistill.config import Experiment
from raydistill.data import center_crop
from raydistill.data.stream import StreamSplit
from raydistill.distill.curriculum import Plan, plan_for, teachers_needed
from raydistill.distill.engine import TrainContext, train_plan
from raydistill.models import count_parameters
from raydistill.progress import interactive
from raydistill.distill.budget import history_budget, plan_flops_per_image
from raydistill.report import format_table, method_summary
from raydistill.report_files import safe_dir_name, write_report_files
from raydistill.teachers import (FrozenTeacher, LocalTeachers, check_teacher_checkpoints, classes_of, load_teacher,
                                 teacher_checkpoint)
from raydistill.teachers.training import teacher_plan
from raydistill.workspace import (PreparedData, check_output_dir, input_stats, prepare_data, refuse_changed_config,
                                  student_settings, teacher_settings)

# train(plan, train_set, val_set, test_set, teacher_client, settings, log=None, stage=None) -> (model, history)
# stage: "teacher:<key>" or "method:<method>", the name live metrics and the progress bar show
TrainFn = Callable[..., tuple]


@dataclass
class RunResult:
    run_dir: object                                 # Path of a local run directory, or its URI (str)
    teachers: dict = field(default_factory=dict)   # key -> {"test_acc", "params", "classes", "source"}
    methods: dict = field(default_factory=dict)    # method -> summary (final_test_acc, params, ...)
    history: list = field(default_factory=list)    # per-epoch metrics of every method

    def table(self) -> str:
        return format_table(self.methods, self.teachers)


def pick_device(exp: Experiment) -> torch.device:
    if exp.device == "cuda" or (exp.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def teacher_classes(key: str, data: PreparedData) -> list:
    return classes_of(key, data.groups)


def start_run(exp: Experiment, log: Optional[Callable[[str], None]] = None) -> tuple[PreparedData, RunDir]:
    """Validate, load the data, create the run directory and write config.yaml — before any training."""
    exp.validate()
    data = prepare_data(exp, log)
    check_teacher_checkpoints(exp.teachers.checkpoints, data.groups, exp.teachers.arch)  # before any training
    out = check_output_dir(exp)
    refuse_changed_config(out, exp)
    out.write_text("config.yaml", exp.to_yaml())
    return data, out


def local_train(device, exp: Optional[Experiment] = None, out: Optional[RunDir] = None, **context) -> TrainFn:
    """`context`: TrainContext options (`Experiment.context_options()`). With `exp` and `out`, every
    epoch goes to the live trackers (`tracking.LiveMetrics`); on a terminal a bar replaces the lines."""
    ctx = TrainContext(device=device, **context)

    def train(plan, train_set, val_set, test_set, client, settings, log=None, stage=None):
        with ExitStack() as stack:
            on_epoch = epoch_watchers(stack, exp, out, stage or plan.method, plan, log, bar=interactive())
            return train_plan(plan, train_set, val_set, test_set, client, settings, ctx,
                              on_epoch_end=lambda metrics, _state: on_epoch(metrics),
                              progress=None if on_epoch.bar else log)
    return train


def epoch_watchers(stack: ExitStack, exp: Optional[Experiment], out: Optional[RunDir], stage: str, plan, log,
                   bar: bool) -> Callable[[dict], None]:
    """The callable rank 0 runs after each epoch of `stage`: live metrics (when `exp` is given) and, with
    `bar` and a log to show, the terminal progress bar (its `.bar` attribute; None when lines are kept).
    Both are closed by `stack`."""
    from raydistill.progress import StageBar
    from raydistill.tracking import LiveMetrics, stage_label
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
    for key in teachers_needed(exp.methods, len(data.groups)):
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
    if not any(lesson.teacher for grade in plan.grades for lesson in grade.lessons):
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
    """`stats`: the {mean, std} the student was trained with (`workspace.input_stats`); default the data's."""
    stats = stats or {"mean": data.mean, "std": data.std}
    out.save_torch(name, {"arch": model.arch, "class_ids": model.class_ids.tolist(),
                          "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                          "mean": list(stats["mean"]), "std": list(stats["std"])})


def write_metrics(out: RunDir, result: RunResult) -> None:
    out.write_json("metrics.json", {"teachers": result.teachers, "methods": result.methods,
                                    "history": result.history})


def finish_run(exp: Experiment, out: RunDir, result: RunResult, log) -> RunResult:
    write_metrics(out, result)
    summary = {"experiment": exp.name, "teachers": result.teachers, "methods": result.methods}
    out.write_json("summary.json", summary)
    with out.local_folder() as folder:   # matplotlib and TensorBoard write local files
        write_report_files(folder, result.history, summary)
        if out.local_path is None:   # the upload adds files: drop the live event files these replace
            for method in {row["method"] for row in result.history}:
                out.delete(f"tensorboard/{safe_dir_name(method)}")
    log(result.table())
    return result


def run_result(out: RunDir) -> RunResult:
    return RunResult(out.local_path or out.location)


def say(message: str) -> None:
    """Progress lines, flushed so they show up live through pipes and job logs."""
    print(message, flush=True)


def run(exp: Experiment, progress: Optional[Callable[[str], None]] = say) -> RunResult:
    """Run an experiment in this process; everything is validated before training starts."""
    log = progress or (lambda _msg: None)
    device = pick_device(exp)
    exp.check_devices(device.type, "local")
    if exp.data.loader == "stream":
        from raydistill.config import ConfigError
        raise ConfigError("data.loader: stream needs the Ray backend (Ray Data pipelines feed Ray Train workers); "
                          "expected memory or auto with --backend local")
    if exp.data.loader == "auto":   # one process: nothing to stream to
        exp = exp.with_overrides(["data.loader=memory"])
    data, out = start_run(exp, log)
    result = run_result(out)
    teachers, result.teachers = prepare_teachers(exp, data, out, device, log)
    client = LocalTeachers(teachers)
    if exp.teachers.soft_labels == "cache" and teachers:
        from raydistill.softlabels import cache_root, ensure_soft_label_cache
        client = ensure_soft_label_cache(exp, data, teachers, root=cache_root(exp), log=log).client()
    train = local_train(device, exp, out, **exp.context_options())
    for method in exp.methods:
        history, result.methods[method] = method_stage(exp, data, out, method, client, log, train)
        result.history += history
        write_metrics(out, result)
    return finish_run(exp, out, result, log)
