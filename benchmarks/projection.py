"""Projected wall time of a whole experiment (default: the paper's `cifar100_paper`) from a few
timed epochs of every stage on synthetic data of the real data's size.

Every stage of the run — each teacher, then each method — is trained by the engine (`train_plan`)
for `--epochs` epochs per grade on random uint8 images with `--classes` classes (CIFAR-100's
size by default: 450 training + 50 validation images per class after the 10% split, 100 test
images per class), in the experiment's precision, layout and compile setting, with in-process
teachers (random weights; speed only) on the same device. A grade's epoch time is its last timed
epoch (the first one carries warm-up: cuDNN autotuning, compilation), validation and test
evaluation included as in a real run; the projection is the sum over stages and grades of that
time x the experiment's epochs in the grade. Not included: Ray start-up, checkpoints, teacher
test accuracy, data loading.

    python benchmarks/projection.py --device cuda                       # the paper, ~8 timed stages
    python benchmarks/projection.py --device cpu --classes 6 --train-per-class 20 --test-per-class 10 \\
        --set student.arch=resnet8 --set teachers.arch=resnet8 --set curriculum.splits=[1,2,3]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from raydistill.config import Experiment
from raydistill.data import ImageSet
from raydistill.distill.curriculum import plan_for, teachers_needed
from raydistill.distill.engine import TrainContext, train_plan
from raydistill.models import build_model
from raydistill.pipeline.stages import teacher_classes
from raydistill.teachers import FrozenTeacher, LocalTeachers
from raydistill.teachers.training import teacher_plan
from raydistill.pipeline.prepare import PreparedData, student_settings, teacher_settings

from throughput import calibrate_batchnorm


def synthetic(exp: Experiment, classes: int, train_per_class: int, test_per_class: int) -> PreparedData:
    """Random uint8 images in the experiment's class groups (sizes are what matter here)."""
    from raydistill.data import groups_from_ratio
    gen = torch.Generator().manual_seed(0)
    val_per_class = round(train_per_class * exp.data.val_fraction / (1 - exp.data.val_fraction))

    def images(per_class: int) -> ImageSet:
        x = torch.randint(0, 256, (classes * per_class, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return ImageSet(x, torch.arange(classes).repeat_interleave(per_class), [str(c) for c in range(classes)])
    groups = groups_from_ratio(classes, exp.data.ratio)
    return PreparedData(images(train_per_class), images(val_per_class), images(test_per_class), groups,
                        [0.5] * 3, [0.25] * 3)


def short(plan, epochs: int):
    """The same plan with `epochs` epochs in every grade."""
    grades = tuple(dataclasses.replace(g, epochs=epochs, first_epoch=i * epochs) for i, g in enumerate(plan.grades))
    return dataclasses.replace(plan, grades=grades)


def timed(plan, epochs: int, train, val, test, client, settings, ctx) -> list:
    """Seconds of the last timed epoch of each grade."""
    stamps = [time.perf_counter()]
    train_plan(short(plan, epochs), train, val, test, client, settings, ctx,
               on_epoch_end=lambda metrics, _state: (_sync(ctx.device), stamps.append(time.perf_counter())))
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:])]
    return [per_epoch[(g + 1) * epochs - 1] for g in range(len(plan.grades))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_teacher(exp: Experiment, classes: list, data: PreparedData, device) -> FrozenTeacher:
    torch.manual_seed(len(classes))
    model = build_model(exp.teachers.arch, len(classes))
    model.class_ids.copy_(torch.tensor(classes))
    calibrate_batchnorm(model, (data.train.images[:256].float() / 255 - 0.5) / 0.25)
    return FrozenTeacher(model, data.mean, data.std, device=device, **exp.serving_options())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar100_paper")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="experiment override")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per grade of every stage")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--train-per-class", type=int, default=450)
    p.add_argument("--test-per-class", type=int, default=100)
    args = p.parse_args(argv)

    exp = Experiment.load(args.config).with_overrides(args.set).validate()
    exp.check_devices(args.device, "local")
    device = torch.device(args.device)
    data = synthetic(exp, args.classes, args.train_per_class, args.test_per_class)
    ctx = TrainContext(device=device, **exp.context_options())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"projection of {exp.name} on {where}, {exp.precision}, compile {exp.compile}: {len(data.train)} train / "
          f"{len(data.val)} val / {len(data.test)} test images, {args.classes} classes; {args.epochs} timed "
          f"epochs per grade", flush=True)
    started = time.perf_counter()
    total = 0.0
    teachers = {}
    for key in teachers_needed(exp.methods, len(data.groups), exp.all_teacher_weights()):
        classes = teacher_classes(key, data)
        plan = teacher_plan(exp.teachers.arch, classes, exp.teachers.epochs)
        subsets = [d.of_classes(classes) for d in (data.train, data.val)]
        seconds = timed(plan, args.epochs, *subsets, None, None, teacher_settings(exp, data), ctx)
        total += report(f"teacher {key}", plan, seconds)
        teachers[key] = random_teacher(exp, classes, data, device)
    client = LocalTeachers(teachers)
    for method in exp.methods:
        plan = plan_for(method, exp, data.groups)
        seconds = timed(plan, args.epochs, data.train, data.val, data.test, client if method != "scratch" else None,
                        student_settings(exp, data), ctx)
        total += report(f"method {method}", plan, seconds)
    print(f"projected wall time of {exp.name}: {total:.0f} s = {total / 3600:.2f} h "
          f"(this projection took {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


def report(name: str, plan, seconds: list) -> float:
    projected = sum(s * g.epochs for s, g in zip(seconds, plan.grades))
    grades = ", ".join(f"{s:.2f} s x {g.epochs}" for s, g in zip(seconds, plan.grades))
    print(f"  {name:<22} {grades}  -> {projected:8.0f} s", flush=True)
    return projected


if __name__ == "__main__":
    sys.exit(main())
