"""What a method's training costs: images seen and student training FLOPs, with each ED fragment
counted at its own (smaller) cost. Results tables need both, because ED's early grades see only
the first groups' images through a fraction of the network: "the same epochs" is not "the same
budget", and a comparison must say which one is equal."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from raydistill.distill.curriculum import Grade, Plan


def grade_train_flops(plan: Plan, grade: Grade, image_size: int) -> float:
    """Forward + backward FLOPs of one training image through the grade's model (torch's own
    counter: convolutions and matmuls, a multiply-add counted as 2), measured on the meta device
    (shapes only, no memory, no compute)."""
    from raydistill.models import build_grade_model
    with torch.device("meta"):
        model = build_grade_model(plan.arch, grade.split, grade.num_classes, grade.head_width or 64,
                                  final=grade.final)
    return _train_flops(model, image_size)


def model_train_flops(arch: str, num_classes: int, image_size: int) -> float:
    """Forward + backward FLOPs of one training image through the complete `arch` (as
    `grade_train_flops`, on the meta device)."""
    from raydistill.models import build_model
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return _train_flops(model, image_size)


def _train_flops(model: torch.nn.Module, image_size: int) -> float:
    with torch.device("meta"):
        x = torch.empty(2, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def plan_flops_per_image(plan: Plan, image_size: int) -> dict:
    """{grade index: training FLOPs per image} of every grade of a plan."""
    return {g.index: grade_train_flops(plan, g, image_size) for g in plan.grades}


def planned_images(plan: Plan, class_counts: Sequence[int]) -> list:
    """Training images each grade will see: its epochs x the training samples of its classes
    (`class_counts[c]`: training samples of class c; the same for every pass mode)."""
    return [g.epochs * sum(int(class_counts[c]) for c in g.class_ids) for g in plan.grades]


def history_budget(plan: Plan, history: list, flops_per_image: dict) -> dict:
    """Images seen and training FLOPs of a finished (or partial) run, from its per-epoch
    `train_images` (real samples, summed over workers): {"train_images", "train_flops"}."""
    mine = [h for h in history if h["method"] == plan.method]
    images = sum(int(h["train_images"]) for h in mine)
    flops = sum(int(h["train_images"]) * flops_per_image[h["grade"] - 1] for h in mine)
    return {"train_images": images, "train_flops": float(flops)}
