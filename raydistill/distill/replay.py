"""A fixed schedule of ed's hyperparameters per epoch (`curriculum.replay`).

Population Based Training changes lr, alpha, T and the teacher-signal mix of a trial while it trains;
the schedule a trial followed is exported as an experiment whose `curriculum.replay` gives those
values from the epoch each took effect, so `raydistill run` replays it as a fixed curriculum. Each
entry's values hold from its `from_epoch` until a later entry sets them; `lr` is the learning-rate
schedule's base (optimizer.lr), so the schedule's shape (cosine, step, onecycle) is kept.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from raydistill.distill.curriculum import Grade


def replayed_values(replay: Sequence[dict], epoch: int) -> dict:
    """{field: value} in force at global epoch `epoch` (0-based): every entry up to it, later ones winning."""
    values: dict = {}
    for entry in replay:
        if entry["from_epoch"] > epoch:
            break
        values.update({k: v for k, v in entry.items() if k != "from_epoch"})
    return values


def at_epoch(settings, grade: Grade, replay: Sequence[dict], epoch: int) -> tuple:
    """(settings, grade) of `epoch` with the replay's values applied: lr and temperature to the
    settings, alpha and all_teacher_weight to the grade (the plan's grades carry both)."""
    values = replayed_values(replay, epoch)
    if not values:
        return settings, grade
    settings = replace(settings, **{k: float(values[k]) for k in ("lr", "temperature") if k in values})
    grade = replace(grade, **{k: float(values[k]) for k in ("alpha", "all_teacher_weight") if k in values})
    return settings, grade
