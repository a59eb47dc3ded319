"""The curriculum plan: which model, classes and teachers each grade of each method uses.

ED and its baselines are all plans of the same shape, so one trainer runs them all:
- ed: K grades, a growing fragment with a teaching reference head, groups joining in `order`;
- multi_teacher: one grade, complete student, all group teachers (ED without the curriculum);
- kd: one grade, complete student, one teacher over all classes;
- scratch: one grade, complete student, CE only.
A method entry may name its distillation loss (`ed+dkd`, `kd+lskd`); the plan carries it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from raydistill.config import METHODS, PASS_MODES, split_method


class CurriculumError(ValueError):
    """An impossible curriculum: split points, order, epochs or widths."""


@dataclass(frozen=True)
class Lesson:
    """One class group taught in a grade: its classes (in the teacher's order) and its teacher."""
    group: str                      # "group0".. or "all"
    classes: tuple                  # global class ids, teacher-local order
    teacher: Optional[str]          # teacher key, or None for CE only


@dataclass(frozen=True)
class Grade:
    index: int
    split: int                      # number of student blocks
    final: bool                     # complete student with its native head
    head_width: Optional[int]       # reference head width (None when final)
    epochs: int
    first_epoch: int                # global epoch index where this grade starts (0-based)
    lessons: tuple                  # active groups, in student head order
    alpha: Optional[float] = None   # CE weight of this grade; None: the run's curriculum.alpha
    # the all-class teacher distilled on the logits of the classes seen so far (its lesson gives the
    # teacher's column order), weighted all_teacher_weight against the group teachers' 1 - weight
    all_teacher: Optional[Lesson] = None
    all_teacher_weight: float = 0.0

    @property
    def class_ids(self) -> list:
        """Global class id of each student output position."""
        return [c for lesson in self.lessons for c in lesson.classes]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)


@dataclass(frozen=True)
class Plan:
    method: str
    arch: str
    grades: tuple
    pass_mode: str
    loss: str = "kd"                # distillation loss (a name in raydistill.distill.losses.LOSSES)
    pretrained: Optional[str] = None  # weights every grade's model starts from (stem + blocks), then carry-over

    @property
    def total_epochs(self) -> int:
        return sum(g.epochs for g in self.grades)

    @property
    def distils(self) -> bool:
        """Whether any grade calls a teacher (scratch does not)."""
        return any(g.all_teacher is not None or any(lesson.teacher for lesson in g.lessons) for g in self.grades)

    def grade_at(self, epoch: int) -> Grade:
        for g in self.grades:
            if g.first_epoch <= epoch < g.first_epoch + g.epochs:
                return g
        raise IndexError(f"epoch {epoch} is past the plan's {self.total_epochs} epochs")


def group_key(index: int) -> str:
    return f"group{index}"


def check_curriculum(num_blocks: int, num_groups: int, splits: Sequence[int], order: Sequence[int],
                     grade_epochs: Sequence[int], head_widths: Sequence[int]) -> None:
    """A grade before the last may have 0 epochs (it is skipped: its group joins the next grade);
    the last grade, the complete student, needs at least one."""
    """Reject impossible curricula with a message naming the offending value."""
    if len(splits) != num_groups:
        raise CurriculumError(f"splits {list(splits)}: expected {num_groups} split points, one per grade")
    for s in splits:
        if not isinstance(s, int) or not 1 <= s <= num_blocks:
            raise CurriculumError(f"splits {list(splits)}: {s!r} is out of range 1..{num_blocks}")
    if any(a >= b for a, b in zip(splits, splits[1:])):
        raise CurriculumError(f"splits {list(splits)}: must be strictly increasing")
    if splits[-1] != num_blocks:
        raise CurriculumError(f"splits {list(splits)}: the last grade must end at block {num_blocks} "
                              "(the complete student)")
    if sorted(order) != list(range(num_groups)):
        raise CurriculumError(f"order {list(order)}: expected a permutation of {list(range(num_groups))}")
    if (len(grade_epochs) != num_groups or any(not isinstance(e, int) or e < 0 for e in grade_epochs)
            or grade_epochs[-1] < 1):
        raise CurriculumError(f"grade_epochs {list(grade_epochs)}: expected {num_groups} non-negative integers, "
                              "the last positive")
    if len(head_widths) != num_groups - 1 or any(not isinstance(w, int) or w < 1 for w in head_widths):
        raise CurriculumError(f"head_widths {list(head_widths)}: expected {num_groups - 1} positive integers")


def plan_ed(arch: str, num_blocks: int, groups: Sequence[Sequence[int]], splits: Sequence[int],
            order: Sequence[int], grade_epochs: Sequence[int], head_widths: Sequence[int],
            pass_mode: str = "sequential", alphas: Optional[Sequence[Optional[float]]] = None,
            all_teacher_weights: Optional[Sequence[float]] = None) -> Plan:
    """ED's grades. A grade of 0 epochs is left out and its group joins the next grade, so early
    budgets of 0 give a plan without fragment grades (all of them 0: the complete student from epoch
    1, i.e. multi_teacher, or kd with the all-class signal). `alphas`: CE weight per grade (None: the
    run's). `all_teacher_weights`: per grade, the weight of the all-class teacher on the seen classes
    (0: group teachers only, the paper; 1: the all-class teacher only, group teachers not called)."""
    check_curriculum(num_blocks, len(groups), splits, order, grade_epochs, head_widths)
    if pass_mode not in PASS_MODES:
        raise CurriculumError(f"pass_mode {pass_mode!r}: expected one of {list(PASS_MODES)}")
    k = len(groups)
    alphas = list(alphas) if alphas is not None else [None] * k
    weights = list(all_teacher_weights) if all_teacher_weights is not None else [0.0] * k
    if len(alphas) != k or len(weights) != k or any(not 0 <= w <= 1 for w in weights):
        raise CurriculumError(f"alphas {alphas} / all_teacher_weights {weights}: expected {k} values, "
                              "weights in [0, 1]")
    everything = Lesson("all", tuple(c for group in groups for c in group), "all")
    grades, start = [], 0
    for g, (split, epochs) in enumerate(zip(splits, grade_epochs)):
        if epochs == 0:
            continue
        w = float(weights[g])
        lessons = tuple(Lesson(group_key(p), tuple(groups[p]), group_key(p) if w < 1 else None) for p in order[:g + 1])
        final = g == k - 1
        grades.append(Grade(len(grades), split, final, None if final else head_widths[g], epochs, start, lessons,
                            alpha=alphas[g], all_teacher=everything if w > 0 else None, all_teacher_weight=w))
        start += epochs
    return Plan("ed", arch, tuple(grades), pass_mode)


def plan_single_grade(method: str, arch: str, num_blocks: int, groups: Sequence[Sequence[int]],
                      epochs: int, pass_mode: str = "mixed") -> Plan:
    """The baselines: the complete student from epoch 1."""
    everything = tuple(c for group in groups for c in group)
    if method == "scratch":
        lessons = (Lesson("all", everything, None),)
    elif method == "kd":
        lessons = (Lesson("all", everything, "all"),)
    elif method == "multi_teacher":
        lessons = tuple(Lesson(group_key(p), tuple(grp), group_key(p)) for p, grp in enumerate(groups))
    else:
        raise CurriculumError(f"method {method!r}: expected one of {list(METHODS)}")
    return Plan(method, arch, (Grade(0, num_blocks, True, None, epochs, 0, lessons),), pass_mode)


def plan_for(method: str, experiment, groups: Sequence[Sequence[int]]) -> Plan:
    """The plan of a `methods` entry (`ed`, `ed+dkd`, …) under an Experiment's settings; an entry
    without a loss uses `distill.loss`. The plan keeps the entry as its name."""
    from raydistill.models import num_blocks
    base, loss = experiment.method_loss(method)
    arch = experiment.student.arch
    blocks = num_blocks(arch)
    c = experiment.curriculum
    if base == "ed":
        grade_epochs = experiment.grade_epochs()
        if c.equal_images:
            grade_epochs = equal_image_epochs(grade_epochs, [len(groups[p]) for p in experiment.order()])
        plan = plan_ed(arch, blocks, groups, experiment.splits(), experiment.order(), grade_epochs,
                       experiment.head_widths(), c.pass_mode, experiment.grade_alphas(),
                       experiment.all_teacher_weights())
    else:
        pass_mode = c.pass_mode if base == "multi_teacher" else "mixed"
        plan = plan_single_grade(base, arch, blocks, groups, experiment.total_epochs(), pass_mode)
    return replace(plan, method=method, loss=loss, pretrained=experiment.student.pretrained)


def equal_image_epochs(grade_epochs: Sequence[int], group_classes: Sequence[int]) -> list:
    """Grade epochs with the last grade extended by the whole epochs that bring ED's images closest
    to a baseline's (all classes for sum(grade_epochs) epochs). Grade g sees the classes of the
    first g groups (`group_classes`, in teaching order), so this counts class-epochs: exact for
    classes of equal size, as CIFAR and the `limit_per_class` subsets are."""
    total = sum(group_classes)
    seen, taught = 0, 0
    for epochs, classes in zip(grade_epochs, group_classes):
        taught += classes
        seen += epochs * taught
    extra = round((sum(grade_epochs) * total - seen) / total)
    return [*grade_epochs[:-1], grade_epochs[-1] + max(0, extra)]


def teachers_needed(methods: Sequence[str], num_groups: int, all_teacher_weights: Sequence[float]) -> list:
    """Teacher keys the methods train with. `ed` needs the group teachers unless every grade's
    all-class weight is 1, and the all-class teacher when some grade's weight is above 0
    (`Experiment.all_teacher_weights()`)."""
    bases = {split_method(m)[0] for m in methods}
    ed = "ed" in bases
    keys = []
    if "multi_teacher" in bases or (ed and min(all_teacher_weights) < 1):
        keys += [group_key(p) for p in range(num_groups)]
    if "kd" in bases or (ed and max(all_teacher_weights) > 0):
        keys.append("all")
    return keys
