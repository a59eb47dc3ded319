"""Teacher training: a group teacher is the `scratch` plan restricted to its group's classes, so
it reuses the engine (and, under Ray, the distributed trainer) with no code of its own."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from raydistill.data import ImageSet
from raydistill.distill.curriculum import Lesson, Grade, Plan
from raydistill.distill.engine import TrainContext, TrainSettings, train_plan
from raydistill.models import num_blocks


def teacher_plan(arch: str, classes: Sequence[int], epochs: int, pretrained: Optional[str] = None) -> Plan:
    """`arch`: staged or any tv:/timm: classifier; `pretrained`: weights it is fine-tuned from."""
    grade = Grade(0, num_blocks(arch), True, None, epochs, 0, (Lesson("teacher", tuple(classes), None),))
    return Plan("teacher", arch, (grade,), "mixed", pretrained=pretrained)


def train_teacher(arch: str, classes: Sequence[int], epochs: int, train: ImageSet, val: ImageSet,
                  settings: TrainSettings, ctx: Optional[TrainContext] = None,
                  progress: Optional[Callable[[str], None]] = None, pretrained: Optional[str] = None):
    """Plain CE on the group's samples; outputs are the group's classes in group-local order.
    No test set: a teacher's test accuracy is measured once, after training, by its caller."""
    subsets = [d.of_classes(classes) for d in (train, val)]
    return train_plan(teacher_plan(arch, classes, epochs, pretrained), *subsets, None, None, settings, ctx,
                      progress=progress)
