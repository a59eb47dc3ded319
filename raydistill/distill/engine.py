"""The ED engine in plain PyTorch: one epoch of one grade, evaluation, and the grade-by-grade
trainer that every method and every backend (in-process, Ray Train workers) runs unchanged.

Ray never appears here. Distribution enters only through `TrainContext` (rank, world size, a
model wrapper such as DDP, and an all-reduce), and teachers only through `TeacherClient`, whose
`submit` is called for batch k+1 before batch k trains so remote teachers overlap with the step.

All randomness (shuffling, augmentation, initialisation) is derived from (seed, epoch, rank), so a
run resumed from an epoch checkpoint replays exactly what an uninterrupted run would have done.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np
import torch
import torch.nn as nn

from raydistill.data import ImageSet, augment_batch, center_crop, normalize, resident_on
from raydistill.data.augment import preset_name
from raydistill.distill.curriculum import Grade, Plan
from raydistill.distill.losses import Distillation, ed_loss
from raydistill.distill.plateau import Plateau, ended_early, with_grade_epochs
from raydistill.distill.precision import Precision
from raydistill.distill.replay import at_epoch
from raydistill.models import build_grade_model, carry_over


class TeacherClient(Protocol):
    """Where teacher logits come from: in-process models, Ray actors, or a cache.

    A client may also carry a `replay` (see `Replay`): then the engine augments with the replay's
    fixed draws instead of fresh random ones and passes `index`/`draw` to `submit`."""

    def submit(self, key: str, images: torch.Tensor, index: Optional[torch.Tensor] = None,
               draw: Optional[torch.Tensor] = None) -> Any:
        """Start computing logits of teacher `key` for uint8 images [B,3,H,W]; return a handle.
        `index` (positions in the training set) and `draw` are given only to clients with a replay."""

    def fetch(self, handle: Any) -> torch.Tensor:
        """The float logits [B, classes of the teacher] for a handle from `submit`."""


class Replay(Protocol):
    """Fixed augmentation draws per training sample (the soft-label cache's bank): a cache holds
    teacher logits for exactly these images, so the student must see the same ones."""

    def __len__(self) -> int:
        """Number of training samples the draws were made for."""

    def draw_at(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """Which draw each sample at `index` uses in global epoch `epoch`."""

    def apply(self, images: torch.Tensor, index: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """The uint8 images of samples `index` augmented with their draws `draw`."""


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names method, grade and epoch."""


@dataclass
class TrainSettings:
    """Everything the trainer needs besides model, data and teachers."""
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64                # global batch, split across workers
    schedule: str = "cosine"            # step | cosine | constant | onecycle (lr set every step)
    milestones: tuple = ()
    warmup_fraction: float = 0.15       # onecycle: share of the run spent rising linearly from 0 to lr
    label_smoothing: float = 0.0        # of the CE term
    gamma: float = 0.1
    restart_per_grade: bool = False
    temperature: float = 4.0            # of every distillation loss whose parameters name none
    alpha: float = 0.3
    losses: dict = field(default_factory=dict)   # loss name -> its configured parameters (distill.<loss>)
    carry_head_rows: bool = False
    keep_momentum: bool = False
    head_relu: bool = True
    augment: str = "cifar"             # preset: cifar | imagenet | none (booleans: true = cifar, false = none)
    image_size: Optional[int] = None    # side the model sees; None: the stored images' side
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.25, 0.25, 0.25)
    seed: int = 0
    eval_batch_size: int = 512
    bn_recalibrate: bool = False        # recompute BN statistics on a mixed pass before evaluating/saving
    test_every_epoch: bool = True       # false: test only at each grade's last epoch (NaN in the others)
    switch: str = "fixed"               # fixed: the plan's grade epochs; plateau: they are maxima (plateau.py)
    patience: int = 2                   # plateau: epochs without improvement of val_acc that end a grade
    min_delta: float = 0.0              # plateau: an improvement is more than this (accuracy, 0..1)
    replay: tuple = ()                  # ed's per-epoch lr/alpha/temperature/all_teacher_weight (replay.py)

    def __post_init__(self):
        self.augment = preset_name(self.augment)


@dataclass
class TrainContext:
    """The seam to distributed training: identity for one in-process worker."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    channels_last: bool = True          # layout of weights and input batches (speed only)
    precision: str = "fp32"             # fp32 | bf16 | fp16: autocast dtype of forwards (see precision.py)
    compile: bool = False               # torch.compile the model being trained
    device_data_fraction: float = 0.5   # training set moves to the GPU if it takes at most this much free memory
    # called on the unwrapped model after every epoch, before evaluation and checkpoint: makes the
    # ranks' BatchNorm running statistics one set (DDP keeps only the parameters equal)
    sync_statistics: Callable[[nn.Module], None] = lambda model: None

    def __post_init__(self):
        self.amp = Precision(self.precision, self.device)

    def train_model(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model wrapped (DDP) and, with `compile`, compiled."""
        wrapped = self.wrap_model(model)
        return torch.compile(wrapped) if self.compile else wrapped

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this worker's device, in this context's memory layout."""
        return model.to(self.device, memory_format=self.memory_format)

    def batch(self, images_uint8: torch.Tensor, s: "TrainSettings") -> torch.Tensor:
        """Normalised float input on this worker's device, in this context's memory layout."""
        return normalize(images_uint8, s.mean, s.std).to(self.device, memory_format=self.memory_format,
                                                         non_blocking=True)


# ---- learning rate ---------------------------------------------------------------------------

def learning_rate(s: TrainSettings, plan: Plan, epoch: float) -> float:
    """lr at a global epoch; with restart_per_grade the schedule restarts at each grade, and step
    milestones count from the grade's first epoch. `epoch` may be fractional (a step inside an
    epoch): `onecycle` is set every step (a linear rise over `warmup_fraction` of the run, then a
    linear fall to 0: the fast-training schedule), the others once per epoch."""
    if s.restart_per_grade:
        grade = plan.grade_at(int(epoch))
        e, total = epoch - grade.first_epoch, grade.epochs
    else:
        e, total = epoch, plan.total_epochs
    if s.schedule == "constant":
        return s.lr
    if s.schedule == "step":
        return s.lr * s.gamma ** sum(1 for m in s.milestones if e >= m)
    if s.schedule == "onecycle":
        peak = s.warmup_fraction * total
        if e < peak:
            return s.lr * e / peak
        return s.lr * max(0.0, (total - e) / max(total - peak, 1e-12))
    return 0.5 * s.lr * (1 + math.cos(math.pi * e / total))


def per_step_schedule(s: TrainSettings) -> bool:
    """Whether the lr changes inside an epoch (onecycle) rather than at its start."""
    return s.schedule == "onecycle"


# ---- batches ----------------------------------------------------------------------------------

def epoch_generator(seed: int, epoch: int, rank: int, stream: int = 0) -> torch.Generator:
    """A generator for (seed, epoch, rank, stream): numpy's SeedSequence hashes the tuple, so no two
    tuples share a seed (a mixed-radix formula collides once a stream or rank outgrows its radix)."""
    state = np.random.SeedSequence([seed, epoch, stream, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def shard_batches(indices: torch.Tensor, batch_size: int, seed: int, epoch: int, stream: int,
                  rank: int, world_size: int) -> list[tuple[torch.Tensor, int]]:
    """Shuffle (same permutation on every rank), pad so ranks get equal counts, take this rank's
    share and cut it into per-worker batches of `batch_size / world_size`. Returns (batch, number of
    real samples): padding repeats samples at the end of the permutation, so it is the tail of a
    rank's last batch, trained on (DDP needs equal steps) but not counted. A trailing batch of one
    sample is dropped (BN)."""
    per_worker = per_worker_batch(batch_size, world_size)
    perm = indices[torch.randperm(len(indices), generator=epoch_generator(seed, epoch, 0, stream))]
    real = len(perm)
    total = math.ceil(real / world_size) * world_size
    if total > real:
        perm = torch.cat([perm, perm[: total - real]])
    mine = perm[rank::world_size]
    mine_real = len(range(rank, real, world_size))   # positions rank, rank+W, ... below the real count
    chunks = list(torch.split(mine, per_worker))
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    out, start = [], 0
    for chunk in chunks:
        out.append((chunk, max(0, min(len(chunk), mine_real - start))))
        start += len(chunk)
    return out


def per_worker_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size or batch_size // world_size < 2:
        raise ValueError(f"batch size {batch_size} over {world_size} worker(s): expected a multiple of the "
                         f"workers with at least 2 samples per worker")
    return batch_size // world_size


def epoch_passes(grade: Grade, pass_mode: str, data, s: "TrainSettings", epoch: int, ctx: "TrainContext",
                 stream_offset: int = 0) -> list[Iterator[tuple]]:
    """This worker's batches of each pass of an epoch, as (sample index, uint8 images, labels, real
    count): slices of an in-memory ImageSet (`shard_batches`), or, for a streamed split
    (`data.stream.StreamSplit`), the same batches with their pixels streamed: both depend on
    (seed, epoch, stream, rank) alone, so a resumed run replays them."""
    if not isinstance(data, ImageSet):
        return [data.pass_batches(shard_batches(index, s.batch_size, s.seed, epoch, stream_offset + stream,
                                                ctx.rank, ctx.world_size))
                for stream, index in enumerate(grade_passes(grade, data.labels, pass_mode))]

    return [MemoryPass(data, shard_batches(index, s.batch_size, s.seed, epoch, stream_offset + stream, ctx.rank,
                                           ctx.world_size))
            for stream, index in enumerate(grade_passes(grade, data.labels, pass_mode))]


class MemoryPass:
    """One pass's batches for this worker, sliced from an in-memory ImageSet: sized, like a streamed
    pass (`data.stream.StreamPass`), so a per-step schedule knows the epoch's step count ahead."""

    def __init__(self, data: ImageSet, batches: list):
        self.data, self.batches = data, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple]:
        return ((b, self.data.images[b], self.data.labels[b], n) for b, n in self.batches)


def grade_passes(grade: Grade, labels: torch.Tensor, pass_mode: str) -> list[torch.Tensor]:
    """Sample indices of each pass of an epoch: one per lesson (sequential) or one mixed."""
    per_lesson = [torch.nonzero(torch.isin(labels, torch.tensor(lesson.classes))).flatten()
                  for lesson in grade.lessons]
    if pass_mode == "sequential":
        return per_lesson
    return [torch.cat(per_lesson)]


def distillation(loss: str, s: TrainSettings) -> Distillation:
    """The registered loss `loss` with its configured parameters (temperature: `s.temperature`
    unless the loss's own block sets one)."""
    return Distillation.of(loss, {"temperature": s.temperature, **s.losses.get(loss, {})})


# ---- one epoch ----------------------------------------------------------------------------

class GradeTables:
    """Index tables of a grade: output position of each class, lesson of each class, and each
    class's position inside its lesson's slice (the target position of the target-class terms)."""

    def __init__(self, grade: Grade, num_classes: int, device: torch.device):
        ids = grade.class_ids
        self.position = torch.full((num_classes,), -1, dtype=torch.long)
        self.position[torch.tensor(ids)] = torch.arange(len(ids))
        self.lesson = torch.full((num_classes,), -1, dtype=torch.long)
        self.in_slice = torch.full((num_classes,), -1, dtype=torch.long)
        for li, lesson in enumerate(grade.lessons):
            self.lesson[torch.tensor(lesson.classes)] = li
            self.in_slice[torch.tensor(lesson.classes)] = torch.arange(len(lesson.classes))
        self.slices = [self.position[torch.tensor(lesson.classes)].to(device) for lesson in grade.lessons]
        # the all-class teacher's column of each student output (its logits on the classes seen so far)
        self.all_teacher_columns = None
        if grade.all_teacher is not None:
            column = {c: j for j, c in enumerate(grade.all_teacher.classes)}
            self.all_teacher_columns = torch.tensor([column[c] for c in ids]).to(device)


ALL_TEACHER = "all"   # key of the all-class signal among a batch's teacher outputs (lessons are numbered)


def kd_sum_of(logits: torch.Tensor, teacher_out: dict, grade: Grade, tables: GradeTables, labels: torch.Tensor,
              targets: torch.Tensor, distill: Distillation, epoch: int, device) -> Optional[torch.Tensor]:
    """The batch's summed per-sample distillation loss: each lesson's teacher on its slice of the
    student's logits, weighted 1 - all_teacher_weight, plus the all-class teacher on every output of the
    grade (the classes seen so far), weighted all_teacher_weight. None when no teacher spoke."""
    w = grade.all_teacher_weight
    total = None
    for li, (rows, t_logits) in teacher_out.items():
        if li == ALL_TEACHER:
            term = w * distill(logits, t_logits.to(device).index_select(1, tables.all_teacher_columns), targets,
                               epoch).sum()
        else:
            student = logits.index_select(0, rows.to(device)).index_select(1, tables.slices[li])
            term = distill(student, t_logits.to(device), tables.in_slice[labels[rows]].to(device), epoch).sum()
            if w:
                term = (1 - w) * term
        total = term if total is None else total + term
    return total


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, grade: Grade, pass_mode: str,
                data: ImageSet, teachers: Optional[TeacherClient], s: TrainSettings, ctx: TrainContext,
                epoch: int, distill: Optional[Distillation] = None,
                step_lr: Optional[Callable[[float], float]] = None) -> dict:
    """Train one epoch of one grade; returns summed loss terms and counts (reduced over workers).
    `distill` is the method's loss (default: KD), applied per lesson to the lesson's slice of the
    student's logits with each sample's target position inside that slice. `step_lr(fraction of
    the epoch done)`: the lr of each step, for schedules set every step."""
    model.train()
    distill = distill or distillation("kd", s)
    tables = GradeTables(grade, data.num_classes, ctx.device)
    sums = torch.zeros(5, dtype=torch.float64, device=ctx.device)  # loss, ce, kd (sample-weighted), correct, samples
    started = time.perf_counter()
    passes = epoch_passes(grade, pass_mode, data, s, epoch, ctx)
    steps_total, step = sum(len(p) for p in passes), 0
    for stream, batches in enumerate(passes):
        aug_gen = epoch_generator(s.seed, epoch, ctx.rank, 1000 + stream)
        for batch, teacher_out in _prefetched(batches, len(data), grade, tables, teachers, s, aug_gen, epoch):
            images, labels, lessons, n = batch
            if step_lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = step_lr(step / max(steps_total, 1))
                step += 1
            x = ctx.batch(images, s)
            targets = tables.position[labels].to(ctx.device)
            logits = ctx.amp.forward(model, x)
            kd_sum = kd_sum_of(logits, teacher_out, grade, tables, labels, targets, distill, epoch, ctx.device)
            terms = ed_loss(logits, targets, kd_sum, s.alpha if grade.alpha is None else grade.alpha,
                            s.label_smoothing)
            # collective, so every worker stops at the same step instead of one of them hanging in DDP's all-reduce
            bad = ctx.all_reduce_sum((~torch.isfinite(terms["loss"].detach())).float().reshape(1))
            if bad.item() > 0:   # the one host sync per step
                raise NonFiniteLossError(f"non-finite loss ({terms['loss'].item()} on rank {ctx.rank}) in grade "
                                         f"{grade.index + 1}, epoch {epoch + 1}")
            ctx.amp.step(terms["loss"], optimizer)
            # n: real samples, first in the batch; padded duplicates (DDP's equal steps) train but are not counted
            with torch.no_grad():
                correct = (logits[:n].argmax(1) == targets[:n]).sum()
                sums += torch.stack([terms["loss"].detach() * n, terms["ce"] * n, terms["kd"] * n,
                                     correct, torch.tensor(n, device=ctx.device)]).double()
    sums = ctx.all_reduce_sum(sums).cpu()
    n = max(sums[4].item(), 1.0)
    seconds = time.perf_counter() - started
    return {"loss": sums[0].item() / n, "ce": sums[1].item() / n, "kd": sums[2].item() / n,
            "train_acc": sums[3].item() / n, "train_images": int(sums[4].item()),
            "seconds": seconds, "images_per_s": sums[4].item() / max(seconds, 1e-9)}


def _prefetched(batches, num_samples: int, grade: Grade, tables: GradeTables, teachers, s: TrainSettings,
                gen: torch.Generator, epoch: int) -> Iterator:
    """Yield ((images, labels, lessons, real count), teacher logits) with batch k+1's teacher calls
    submitted before k is used. With a replay (soft-label cache) sample i is augmented with its draw
    for this epoch and the client is told (sample, draw); otherwise augmentation is drawn from `gen`."""
    replay: Optional[Replay] = getattr(teachers, "replay", None)
    if replay is not None and len(replay) != num_samples:
        raise ValueError(f"soft-label cache: its augmentation bank covers {len(replay)} training samples, "
                         f"expected {num_samples} (the training set it is used with)")

    def prepare(item):
        index, images, labels, n = item
        draw = None
        if replay is not None:
            draw = replay.draw_at(index, epoch)
            images = replay.apply(images, index, draw)
        else:
            images = augment_batch(images, s.augment, s.image_size, gen)
        lessons = tables.lesson[labels]
        calls = {}
        if teachers is not None:
            for li, lesson in enumerate(grade.lessons):
                if lesson.teacher is None:
                    continue
                rows = torch.nonzero(lessons == li).flatten()
                if len(rows):
                    sub = images if len(rows) == len(labels) else images[rows]
                    if replay is None:
                        calls[li] = (rows, teachers.submit(lesson.teacher, sub))
                    else:
                        calls[li] = (rows, teachers.submit(lesson.teacher, sub, index=index[rows], draw=draw[rows]))
            if grade.all_teacher is not None:
                every = torch.arange(len(labels))
                key = grade.all_teacher.teacher
                calls[ALL_TEACHER] = (every, teachers.submit(key, images) if replay is None else
                                      teachers.submit(key, images, index=index, draw=draw))
        return (images, labels, lessons, n), calls

    pending = None
    for item in batches:
        ready, pending = pending, prepare(item)
        if ready is not None:
            yield ready[0], {li: (rows, teachers.fetch(h)) for li, (rows, h) in ready[1].items()}
    if pending is not None:
        yield pending[0], {li: (rows, teachers.fetch(h)) for li, (rows, h) in pending[1].items()}


RECALIBRATION_STREAM = 2000   # shuffling stream of the recalibration pass (apart from the training passes')


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, grade: Grade, data: ImageSet, s: TrainSettings, ctx: TrainContext,
                          epoch: int) -> None:
    """Recompute BN running statistics as the plain average over one no-grad, un-augmented pass of
    mixed batches of all the grade's classes (torch's `update_bn`). A sequential epoch ends with a
    whole pass over its last lesson, so the running statistics otherwise describe that group only."""
    from torch.optim.swa_utils import update_bn
    batches = epoch_passes(grade, "mixed", data, s, epoch, ctx, stream_offset=RECALIBRATION_STREAM)[0]
    update_bn((ctx.batch(center_crop(images, s.image_size), s) for _, images, _, _ in batches), model)


def eval_batches(data, class_ids: torch.Tensor, batch_size: int, rank: int, world_size: int) -> Iterator[tuple]:
    """(uint8 images, labels) of this worker's share of the samples of `class_ids`."""
    if not isinstance(data, ImageSet):
        yield from data.of_classes(class_ids.tolist()).eval_batches(batch_size)
        return
    index = torch.nonzero(torch.isin(data.labels, class_ids)).flatten()[rank::world_size]
    for chunk in torch.split(index, batch_size):
        yield data.images[chunk], data.labels[chunk]


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, class_ids, s: TrainSettings, ctx: TrainContext,
             task_class_ids=None):
    """Top-1 accuracy (eval mode, no grads) on the samples of the given classes, predicting among
    them; sharded over workers and summed. NaN when there are no such samples (e.g. no val split).

    With `task_class_ids` (every class of the task), returns (accuracy on `class_ids`, accuracy on
    all samples of the task), one pass: a sample of a class the grade has not been taught yet counts
    as an error. The second number means the same at every epoch of every curriculum, so a search
    scheduler can compare trials that stand in different grades or were taught different groups."""
    model.eval()
    ids = torch.as_tensor(list(class_ids))
    over = ids if task_class_ids is None else torch.as_tensor(list(task_class_ids))
    counts = torch.zeros(4, dtype=torch.float64)    # correct, samples: of `class_ids`, then of `over`
    for images, labels in eval_batches(data, over, s.eval_batch_size, ctx.rank, ctx.world_size):
        predicted = ids[ctx.amp.forward(model, ctx.batch(center_crop(images, s.image_size), s)).argmax(1).cpu()]
        correct, taught = predicted == labels, torch.isin(labels, ids)
        counts += torch.tensor([(correct & taught).sum().item(), taught.sum().item(),
                                correct.sum().item(), len(labels)], dtype=torch.float64)
    counts = ctx.all_reduce_sum(counts.to(ctx.device)).cpu()
    seen, task = (counts[i].item() / counts[i + 1].item() if counts[i + 1] > 0 else float("nan") for i in (0, 2))
    return seen if task_class_ids is None else (seen, task)


# ---- the whole plan ----------------------------------------------------------------------

@dataclass
class TrainState:
    """What an epoch checkpoint holds: enough to continue exactly where training stopped."""
    epoch: int                          # epochs completed (global)
    grade: int                          # grade of the last completed epoch
    model: dict                         # state_dict of the grade model (unwrapped)
    optimizer: dict
    history: list                       # metrics of completed epochs
    grade_epochs: Optional[list] = None # the plan's epochs per grade as re-timed by plateau switches
    plateau: Optional[dict] = None      # the current grade's plateau state (Plateau.to_dict)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "grade": self.grade, "model": self.model, "optimizer": self.optimizer,
                "history": self.history, "grade_epochs": self.grade_epochs, "plateau": self.plateau}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(d["epoch"], d["grade"], d["model"], d["optimizer"], d["history"], d.get("grade_epochs"),
                   d.get("plateau"))


def build_optimizer(model: nn.Module, s: TrainSettings, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _carry_momentum(old_model, old_opt, new_model, new_opt, carried: list) -> None:
    """Keep SGD momentum buffers of carried parameters (the paper's code resets them)."""
    old_params = dict(old_model.named_parameters())
    carried = set(carried)
    for name, p in new_model.named_parameters():
        q = old_params.get(name)
        if name in carried and q is not None and "momentum_buffer" in old_opt.state.get(q, {}):
            new_opt.state[p]["momentum_buffer"] = old_opt.state[q]["momentum_buffer"].clone()


def grade_model(plan: Plan, grade: Grade, num_classes_total: int, s: TrainSettings) -> nn.Module:
    """A freshly initialised model for a grade (seeded, so every worker builds the same one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed * 7919 + grade.index)
        model = build_grade_model(plan.arch, grade.split, grade.num_classes, grade.head_width or 64,
                                  final=grade.final, head_relu=s.head_relu, pretrained=plan.pretrained)
    model.class_ids.copy_(torch.tensor(grade.class_ids))
    return model


def train_plan(plan: Plan, train: ImageSet, val: ImageSet, test: Optional[ImageSet], teachers: Optional[TeacherClient],
               s: TrainSettings, ctx: TrainContext = None, *, resume: Optional[TrainState] = None,
               on_epoch_end: Callable[[dict, Callable[[], TrainState]], None] = None,
               progress: Callable[[str], None] = None) -> tuple[nn.Module, list]:
    """Run every grade of a plan. Returns the final (unwrapped) model and per-epoch metrics.

    At a grade switch the next grade's model is built, every parameter and buffer whose name and
    shape match is carried over, and the optimizer is rebuilt at the current lr.
    `on_epoch_end(metrics, make_state)` is where backends report and checkpoint. `test=None` skips
    the per-epoch test evaluation (teachers: their test accuracy is measured once, at the end).
    """
    ctx = ctx or TrainContext()
    distill = distillation(plan.loss, s)
    if isinstance(train, ImageSet):   # a streamed split arrives batch by batch
        train = resident_on(train, ctx.device, ctx.device_data_fraction)
    history = list(resume.history) if resume else []
    start_epoch = resume.epoch if resume else 0
    model = optimizer = wrapped = current_grade = None
    plateau = Plateau(s.patience, s.min_delta) if s.switch == "plateau" else None
    if resume is not None:
        if resume.grade_epochs is not None:
            plan = with_grade_epochs(plan, resume.grade_epochs)
        if plateau is not None and resume.plateau is not None:
            plateau.restore(resume.plateau)
        current_grade = plan.grades[resume.grade]
        model = ctx.place(grade_model(plan, current_grade, train.num_classes, s))
        model.load_state_dict(resume.model)
        optimizer = build_optimizer(model, s, s.lr)
        optimizer.load_state_dict(resume.optimizer)
        wrapped = ctx.train_model(model)
    base_settings, replay = s, s.replay if plan.method.split("+")[0] == "ed" else ()
    for epoch in range(start_epoch, plan.total_epochs):
        grade = plan.grade_at(epoch)
        if replay:   # curriculum.replay: this epoch's lr, T, alpha and teacher mix
            s, grade = at_epoch(base_settings, grade, replay, epoch)
            distill = distillation(plan.loss, s)
        # a per-step schedule sets every step's lr in train_epoch; the epoch's recorded lr is its middle's
        lr = learning_rate(s, plan, epoch + 0.5 if per_step_schedule(s) else epoch)
        if current_grade is None or grade.index != current_grade.index:
            new_model = ctx.place(grade_model(plan, grade, train.num_classes, s))
            new_opt = build_optimizer(new_model, s, lr)
            if model is not None:
                carried = carry_over(model, new_model, carry_head_rows=s.carry_head_rows)
                if s.keep_momentum:
                    _carry_momentum(model, optimizer, new_model, new_opt, carried)
            model, optimizer, current_grade = new_model, new_opt, grade
            wrapped = ctx.train_model(model)
            if plateau is not None:
                plateau.reset()
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_lr = (lambda fraction, e=epoch: learning_rate(s, plan, e + fraction)) if per_step_schedule(s) else None
        try:
            metrics = train_epoch(wrapped, optimizer, grade, plan.pass_mode, train, teachers, s, ctx, epoch, distill,
                                  step_lr)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"{plan.method}: {err}") from None
        if s.bn_recalibrate:
            recalibrate_batchnorm(model, grade, train, s, ctx, epoch)
        ctx.sync_statistics(model)
        val_acc, val_acc_all = evaluate(model, val, grade.class_ids, s, ctx, plan.grades[-1].class_ids)
        last_of_grade = epoch + 1 == grade.first_epoch + grade.epochs
        can_end_early = plateau is not None and not last_of_grade and grade.index < len(plan.grades) - 1
        if can_end_early and plateau.update(val_acc):
            plan, last_of_grade = ended_early(plan, grade.index, epoch + 1 - grade.first_epoch), True
        metrics = {"method": plan.method, "grade": grade.index + 1, "epoch": epoch + 1, "lr": lr,
                   "num_classes": grade.num_classes, "blocks": grade.split, **metrics,
                   "val_acc": val_acc, "val_acc_all_classes": val_acc_all,
                   "test_acc": evaluate(model, test, grade.class_ids, s, ctx) if test is not None and (
                       s.test_every_epoch or last_of_grade) else float("nan")}
        history.append(metrics)
        if progress and ctx.rank == 0:
            progress(f"{plan.method:>13} grade {grade.index + 1}/{len(plan.grades)} epoch {epoch + 1:>3}/"
                     f"{plan.total_epochs} lr {lr:.4f} loss {metrics['loss']:.3f} "
                     f"train {metrics['train_acc']:.3f} val {metrics['val_acc']:.3f} "
                     f"({metrics['images_per_s']:.0f} img/s)")
        if on_epoch_end is not None:
            on_epoch_end(metrics, lambda: TrainState(
                epoch + 1, grade.index, _cpu_state(model), _cpu_optimizer_state(optimizer), list(history),
                [g.epochs for g in plan.grades], plateau.to_dict() if plateau is not None else None))
    return model, history


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _cpu_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """A copy: `state_dict()` holds the live momentum buffers, which the next step changes in place,
    so a state kept in memory (not saved at once) would resume with a later epoch's momentum."""
    state = optimizer.state_dict()
    return {"state": {k: {n: v.detach().cpu().clone() if torch.is_tensor(v) else v for n, v in per.items()}
                      for k, per in state["state"].items()},
            "param_groups": [dict(g) for g in state["param_groups"]]}
