"""Grades that end when the fragment has learned (`curriculum.switch: plateau`).

A fixed curriculum decides every grade's epochs before the run. With `plateau` a grade's configured
epochs are its *maximum*: it ends earlier when the validation accuracy on the classes it has seen
has not improved by more than `min_delta` for `patience` epochs. The plan is then re-timed: the
later grades start earlier and the last (the complete student) absorbs the freed epochs, so the run
still trains exactly its budget. The state (best value, epochs without improvement, the re-timed
grade epochs) travels in every epoch checkpoint, so a resumed run switches where an uninterrupted
one would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from raydistill.distill.curriculum import Plan


@dataclass
class Plateau:
    """Early-stopping state of the current grade."""
    patience: int                   # epochs without improvement that end the grade
    min_delta: float = 0.0          # an epoch improves when it beats the best by more than this
    best: float = -math.inf
    stale: int = 0                  # epochs since the last improvement

    def update(self, value: float) -> bool:
        """Record one epoch's validation accuracy; True when the grade has plateaued."""
        if value > self.best + self.min_delta:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def reset(self) -> None:
        """A new grade: a new model and new classes, nothing to compare with."""
        self.best, self.stale = -math.inf, 0

    def to_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def restore(self, d: dict) -> None:
        self.best, self.stale = float(d["best"]), int(d["stale"])


def with_grade_epochs(plan: Plan, epochs: Sequence[int]) -> Plan:
    """The plan with these epochs per grade (first epochs recomputed)."""
    if len(epochs) != len(plan.grades):
        raise ValueError(f"grade epochs {list(epochs)}: expected {len(plan.grades)}, one per grade of the plan")
    grades, start = [], 0
    for grade, n in zip(plan.grades, epochs):
        grades.append(replace(grade, epochs=int(n), first_epoch=start))
        start += int(n)
    return replace(plan, grades=tuple(grades))


def ended_early(plan: Plan, grade_index: int, epochs_done: int) -> Plan:
    """The plan with grade `grade_index` ended after `epochs_done` epochs; the last grade takes the
    epochs it freed, so the total is unchanged."""
    epochs = [g.epochs for g in plan.grades]
    freed = epochs[grade_index] - epochs_done
    if grade_index == len(epochs) - 1 or not 1 <= epochs_done <= epochs[grade_index]:
        raise ValueError(f"grade {grade_index + 1} cannot end after {epochs_done} of its {epochs[grade_index]} epochs")
    epochs[grade_index] = epochs_done
    epochs[-1] += freed
    return with_grade_epochs(plan, epochs)
