"""The `optimizer` section: the students' SGD and learning-rate schedule."""
from __future__ import annotations

from dataclasses import dataclass, field

from raydistill.config.errors import need

SCHEDULES = ("step", "cosine", "constant", "onecycle")   # the teachers' schedules too


@dataclass
class OptimizerConfig:
    """`optimizer`: the students' SGD and learning-rate schedule."""
    lr: float = 0.05                    # student SGD learning rate (peak, for onecycle)
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 5e-4          # SGD weight decay (also the teachers', unless teachers.weight_decay)
    batch_size: int = 64                # student batch, global across workers: a multiple of ray.workers, >= 2 each
    schedule: str = "cosine"            # step | cosine | constant | onecycle (linear rise then fall, set every step)
    milestones: list = field(default_factory=lambda: [])  # global epochs, for "step"
    warmup_fraction: float = 0.15       # onecycle: share of the epochs spent rising to lr
    gamma: float = 0.1                  # step: lr factor at each milestone
    restart_per_grade: bool = False     # restart the schedule at each grade (warm restarts)

    def check(self) -> None:
        """The section's own fields (the batch against ray.workers is Experiment's)."""
        o = self
        need(o.lr > 0, "optimizer.lr", "a positive number", o.lr)
        need(0 <= o.momentum < 1, "optimizer.momentum", "a number in [0, 1)", o.momentum)
        need(o.weight_decay >= 0, "optimizer.weight_decay", "a non-negative number", o.weight_decay)
        need(o.batch_size >= 1, "optimizer.batch_size", "a positive integer", o.batch_size)
        need(o.schedule in SCHEDULES, "optimizer.schedule", f"one of {list(SCHEDULES)}", o.schedule)
        need(isinstance(o.warmup_fraction, (int, float)) and 0 <= o.warmup_fraction < 1,
             "optimizer.warmup_fraction", "a number in [0, 1)", o.warmup_fraction)
        need(all(isinstance(m, int) and m > 0 for m in o.milestones), "optimizer.milestones",
             "positive integer epochs", o.milestones)
        need(0 < o.gamma <= 1, "optimizer.gamma", "a number in (0, 1]", o.gamma)
