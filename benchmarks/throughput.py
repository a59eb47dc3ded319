"""Images/s of one ED grade step (final grade: complete student, all group teachers), three ways:

  (a) bare   — a plain PyTorch loop in this process doing the same math (augment, normalise,
               student fwd+bwd, teacher fwd under inference_mode, sliced KD), all cores;
  (b) local  — the engine (`train_epoch`) with in-process teachers (`LocalTeachers`), all cores;
  (c) actors — the engine with one `TeacherActor` per teacher: the student process gets
               `--student-threads`, each actor `--teacher-threads`; the engine submits batch
               k+1's teacher call before training batch k, so teacher and student overlap;
  (d) cached — the engine with cached soft labels (`raydistill.softlabels`): the teachers' logits
               for a bank of `--cache-draws` augmentations per image are computed once (build
               time and Parquet bytes per 10k samples are reported), written, read back, and
               replayed; no teacher forward in the step.

Random-weight models and synthetic uint8 data (speed only). Ratios are against (a).
`--imagenet` is the 224 px mode: torchvision ResNet-18 student (staged), ResNet-50 group teachers,
224x224 images, batch 16; there (a) runs torchvision's own models (`to_torchvision`, same weights),
the best plain loop a user would write: channels_last student and teachers, teachers eval-mode with
BatchNorm fused by torch.fx (`torch.fx.experimental.optimization.fuse`) under inference_mode.
`--device cuda` runs all four on the GPU (models, teachers, the uint8 set resident on the device;
actors in (c) get `--actor-gpus` of it each); `--precision` sets the autocast of student and teachers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput.py            # defaults below
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput.py --only ad --repeats 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput.py --imagenet --only ab --alternate   # 224 px
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from raydistill.data import ImageSet, normalize, random_crop_flip, resident_on
from raydistill.distill.curriculum import plan_ed
from raydistill.distill.engine import (GradeTables, TrainContext, TrainSettings, build_optimizer, grade_model,
                                       train_epoch)
from raydistill.distill.losses import ed_loss, kd as kd_loss
from raydistill.models import build_model, num_blocks
from raydistill.models.torchvision_nets import to_torchvision
from raydistill.teachers import FrozenTeacher, LocalTeachers


def make_setup(args):
    k, per_class = args.groups, args.images_per_class
    classes = k * args.classes_per_group
    gen = torch.Generator().manual_seed(0)
    size = args.image_size
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    data = ImageSet(images, labels, [str(c) for c in range(classes)])
    groups = [list(range(p * args.classes_per_group, (p + 1) * args.classes_per_group)) for p in range(k)]
    blocks = num_blocks(args.student)
    splits = [round((g + 1) * blocks / k) for g in range(k)]
    plan = plan_ed(args.student, blocks, groups, splits, list(range(k)), [1] * k, [64] * (k - 1), args.pass_mode)
    torch.manual_seed(0)
    teachers = {}
    for p, grp in enumerate(groups):
        m = build_model(args.teacher, len(grp))
        m.class_ids.copy_(torch.tensor(grp))
        calibrate_batchnorm(m, normalize(images[:min(256, max(32, 4096 // size))], (0.5,) * 3, (0.25,) * 3))
        teachers[f"group{p}"] = FrozenTeacher(m, (0.5,) * 3, (0.25,) * 3, device=args.device,
                                              precision=args.precision)
    s = TrainSettings(batch_size=args.batch, mean=(0.5,) * 3, std=(0.25,) * 3, schedule="constant")
    return data, plan, plan.grades[-1], teachers, s


def context(args) -> TrainContext:
    return TrainContext(device=torch.device(args.device), precision=args.precision)


@torch.no_grad()
def calibrate_batchnorm(model, x) -> None:
    """BN running statistics from one batch: a random deep net in eval mode with default statistics
    outputs logits around 1e8 (beyond float16, so (d) could not store them); calibrated, they have
    a trained net's scale. Speed is the same either way."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None           # cumulative average: one batch = that batch's statistics
    model.train()(x)
    model.eval()


def torchvision_models(plan, grade, data, teachers, s):
    """(student, {teacher key: teacher}) as torchvision's own models with the engine's weights: the
    student channels_last, each teacher eval-mode, BatchNorm fused by torch.fx, channels_last."""
    from torch.fx.experimental.optimization import fuse
    student = to_torchvision(grade_model(plan, grade, data.num_classes, s)).to(memory_format=torch.channels_last)
    served = {k: fuse(to_torchvision(t.model).eval()).to(memory_format=torch.channels_last)
              for k, t in teachers.items()}
    return student, served


def bare_loop(data, plan, grade, teachers, s, epoch, ctx: TrainContext, plain_torchvision: bool = False) -> float:
    """The same math as the engine's step, written as the plain loop a user would write (on the
    device: the uint8 set resident there, crop/flip/normalise there, autocast in ctx's precision).
    `plain_torchvision`: torchvision's own models, tuned as a user would (`torchvision_models`)."""
    dev, amp = ctx.device, ctx.amp
    if plain_torchvision:
        model, nets = torchvision_models(plan, grade, data, teachers, s)
        model, nets = model.to(dev), {k: n.to(dev) for k, n in nets.items()}
        layout = torch.channels_last
    else:
        model, nets = grade_model(plan, grade, data.num_classes, s).to(dev), {k: t.model for k, t in teachers.items()}
        layout = torch.contiguous_format
    opt = build_optimizer(model, s, s.lr)
    tables = GradeTables(grade, data.num_classes, dev)
    images_all = data.images.to(dev)
    gen = torch.Generator().manual_seed(epoch)
    model.train()
    n, started = 0, time.perf_counter()
    passes = [[li] for li in range(len(grade.lessons))] if plan.pass_mode == "sequential" \
        else [list(range(len(grade.lessons)))]
    for lesson_ids in passes:
        idx = torch.nonzero(torch.isin(data.labels, torch.tensor(
            [c for li in lesson_ids for c in grade.lessons[li].classes]))).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        for b in torch.split(idx, s.batch_size):
            images = random_crop_flip(images_all[b], padding=4, generator=gen)
            labels = data.labels[b]
            lessons = tables.lesson[labels]
            logits = amp.forward(model, normalize(images, s.mean, s.std).contiguous(memory_format=layout))
            kd = None
            for li in lesson_ids:
                rows = torch.nonzero(lessons == li).flatten()
                with torch.inference_mode():
                    t = amp.forward(nets[grade.lessons[li].teacher],
                                    normalize(images[rows.to(dev)], s.mean, s.std).contiguous(memory_format=layout))
                term = kd_loss(logits[rows.to(dev)][:, tables.slices[li]], t,
                               tables.in_slice[labels[rows]].to(dev), temperature=s.temperature).sum()
                kd = term if kd is None else kd + term
            loss = ed_loss(logits, tables.position[labels].to(dev), kd, s.alpha)["loss"]
            amp.step(loss, opt)
            n += len(b)
    _sync(dev)
    return n / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_epoch(data, plan, grade, client, s, epoch, ctx: TrainContext) -> float:
    """One engine epoch as `train_plan` runs it: model placed, training set resident on the device."""
    model = ctx.place(grade_model(plan, grade, data.num_classes, s))
    opt = build_optimizer(model, s, s.lr)
    data = resident_on(data, ctx.device, ctx.device_data_fraction)
    m = train_epoch(ctx.train_model(model), opt, grade, plan.pass_mode, data, client, s, ctx, epoch)
    return m["images_per_s"]


def cached_client(args, data, teachers):
    """Build the soft-label cache of `teachers` on `data`, write it, read it back, return the client."""
    from raydistill.softlabels import AugmentationBank, CachedTeachers
    from raydistill.softlabels.build import build_labels
    from raydistill.softlabels.store import read_labels, read_meta, write_cache
    bank = AugmentationBank.make(len(data), args.cache_draws, padding=4, flip=True, seed=0)
    options = None
    if args.cache_build == "ray":
        import ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
        options = {"num_cpus": 1, "num_gpus": 0, "resources": {}}
    started = time.perf_counter()
    try:
        labels = build_labels(teachers, data.images, data.labels, bank, args.cache_format, args.cache_topk, options)
    finally:
        if options is not None:
            ray.shutdown()
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "cache"
        size = write_cache(directory, "benchmark", {"bank": bank.params()}, labels, seconds)
        labels = read_labels(directory, read_meta(directory))
    per10k = 10_000 / len(data)
    print(f"    cache build ({args.cache_build}, {len(teachers)} x {args.teacher}, {args.cache_draws} draws, "
          f"{args.cache_format}): {seconds:.1f} s for {len(data)} images = {seconds * per10k:.0f} s per 10k "
          f"samples; {size} bytes = {size * per10k / 1e6:.2f} MB per 10k samples", flush=True)
    return CachedTeachers(bank, labels)


def measure(fn, repeats: int) -> float:
    fn(0)  # warm-up epoch (allocator, thread pools, actor start)
    return max(fn(e + 1) for e in range(repeats))


def measure_alternating(fns: dict, repeats: int) -> dict:
    """`measure` for several settings whose epochs take turns (a b a b …): on a machine whose load
    drifts, each setting sees the same conditions, so their ratio is fair."""
    for fn in fns.values():
        fn(0)
    best = {key: 0.0 for key in fns}
    for e in range(repeats):
        for key, fn in fns.items():
            best[key] = max(best[key], fn(e + 1))
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--imagenet", action="store_true",
                   help="224 px mode: defaults below become resnet18 / resnet50 / 224 / batch 16 / "
                        "2 classes per group / 16 images per class, and (a) runs torchvision's own models")
    p.add_argument("--student", default=None, help="default resnet20 (--imagenet: resnet18)")
    p.add_argument("--teacher", default=None, help="default resnet110 (--imagenet: resnet50)")
    p.add_argument("--image-size", type=int, default=None, help="default 32 (--imagenet: 224)")
    p.add_argument("--batch", type=int, default=None, help="default 128 (--imagenet: 16)")
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--classes-per-group", type=int, default=None, help="default 10 (--imagenet: 2)")
    p.add_argument("--images-per-class", type=int, default=None,
                   help="per class; an epoch is one measurement (default 64, --imagenet: 16)")
    p.add_argument("--pass-mode", default="sequential", choices=["sequential", "mixed"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for (a) and (b)")
    p.add_argument("--student-threads", type=int, default=1, help="torch threads of the student in (c)")
    p.add_argument("--teacher-threads", type=int, default=1, help="torch threads of each teacher actor in (c)")
    p.add_argument("--no-fold-bn", action="store_true", help="(c) without BN folding / channels_last")
    p.add_argument("--repeats", type=int, default=2, help="measured epochs per setting (best is reported)")
    p.add_argument("--cache-draws", type=int, default=8, help="(d): augmentation draws per image in the cache")
    p.add_argument("--cache-format", default="float16", choices=["float16", "topk"], help="(d): storage format")
    p.add_argument("--cache-topk", type=int, default=5, help="(d) with --cache-format topk: logits kept")
    p.add_argument("--cache-build", default="local", choices=["local", "ray"],
                   help="(d): build in this process, or as Ray tasks (one CPU each)")
    p.add_argument("--only", default="abc", help="which of a, b, c, d to run")
    p.add_argument("--alternate", action="store_true",
                   help="(a) and (b) take turns epoch by epoch (fair ratio on a machine whose load drifts)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where all four run")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    p.add_argument("--actor-gpus", type=float, default=0.25, help="(c) with --device cuda: GPU share per actor")
    args = p.parse_args(argv)
    defaults = dict(student=("resnet20", "resnet18"), teacher=("resnet110", "resnet50"), image_size=(32, 224),
                    batch=(128, 16), classes_per_group=(10, 2), images_per_class=(64, 16))
    for name, (cifar, imagenet) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, imagenet if args.imagenet else cifar)

    data, plan, grade, teachers, s = make_setup(args)
    ctx = context(args)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} cores"
    print(f"ED grade {grade.index + 1}/{len(plan.grades)} step ({args.pass_mode}): student {args.student}, "
          f"{args.groups} teachers {args.teacher}, {args.image_size} px, batch {args.batch}, {len(data)} images/epoch, "
          f"{args.precision} on {where}")
    results = {}
    torch.set_num_threads(args.threads)
    in_process = {"a": lambda e: bare_loop(data, plan, grade, teachers, s, e, ctx, args.imagenet),
                  "b": lambda e: engine_epoch(data, plan, grade, LocalTeachers(teachers), s, e, ctx)}
    if args.alternate and "a" in args.only and "b" in args.only:
        results.update(measure_alternating(in_process, args.repeats))
    else:
        results.update({k: measure(fn, args.repeats) for k, fn in in_process.items() if k in args.only})
    what = "bare torchvision loop" if args.imagenet else "bare PyTorch loop"
    if "a" in results:
        print(f"(a) {what}, {args.threads} threads:            {results['a']:7.1f} img/s", flush=True)
    if "b" in results:
        print(f"(b) engine + LocalTeachers, {args.threads} threads:       {results['b']:7.1f} img/s", flush=True)
    if "c" in args.only:
        import ray
        from raydistill.distributed.teacher_actors import ActorTeachers, start_teacher_actors, teacher_bytes
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
        try:
            # each actor asks for a share of one CPU: only one teacher is busy at a time in sequential mode
            cpus = 1.0 / len(teachers)
            actors = start_teacher_actors({k: teacher_bytes(t) for k, t in teachers.items()}, cpus=cpus,
                                          gpus=args.actor_gpus if args.device == "cuda" else 0.0,
                                          threads=args.teacher_threads, fold_bn=not args.no_fold_bn,
                                          channels_last=not args.no_fold_bn, precision=args.precision)
            torch.set_num_threads(args.student_threads)
            client = ActorTeachers(actors)
            results["c"] = measure(lambda e: engine_epoch(data, plan, grade, client, s, e, ctx), args.repeats)
            print(f"(c) engine + teacher actors, {args.student_threads}+{args.teacher_threads} threads:"
                  f"      {results['c']:7.1f} img/s", flush=True)
        finally:
            ray.shutdown()
    if "d" in args.only:
        torch.set_num_threads(args.threads)
        client = cached_client(args, data, teachers)
        results["d"] = measure(lambda e: engine_epoch(data, plan, grade, client, s, e, ctx), args.repeats)
        print(f"(d) engine + cached soft labels, {args.threads} threads:  {results['d']:7.1f} img/s", flush=True)
    if "a" in results:
        for key in ("b", "c", "d"):
            if key in results:
                print(f"({key})/(a) = {results[key] / results['a']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
