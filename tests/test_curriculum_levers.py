"""The curriculum search's levers (issue 33): ED's teacher signal (group teachers, the all-class
teacher on the seen classes, or a mix), grade budgets as fractions of a fixed total (0 % early: no
fragment grade), and alpha per grade. Plain PyTorch, tiny data."""
import pytest
import torch
import torch.nn.functional as F

from raydistill.config import ConfigError
from raydistill.distill.curriculum import plan_ed, plan_for, plan_single_grade, teachers_needed
from raydistill.distill.engine import (ALL_TEACHER, GradeTables, TrainSettings, distillation, grade_model, kd_sum_of,
                                       train_epoch)
from raydistill.teachers import FrozenTeacher

from conftest import tiny_experiment

GROUPS = [[0, 1], [2, 3], [4, 5]]


def _hand_kd(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), summed over the batch, written out."""
    p = F.softmax(teacher / t, dim=1)
    return (t * t * (p * (p.log() - F.log_softmax(student / t, dim=1))).sum(dim=1)).sum()


def test_all_class_signal_distils_the_seen_classes_slice_of_the_all_class_teacher():
    """Grade 2 of order [2, 0, 1] has seen classes 4, 5, 0, 1 (student outputs in that order): the
    all-class teacher's logits of exactly those classes, in that order, are what it distils."""
    torch.manual_seed(0)
    plan = plan_ed("resnet8", 3, GROUPS, [1, 2, 3], [2, 0, 1], [1, 1, 1], [8, 8], "mixed",
                   all_teacher_weights=[1.0, 1.0, 1.0])
    grade = plan.grades[1]
    assert grade.class_ids == [4, 5, 0, 1]
    assert all(lesson.teacher is None for lesson in grade.lessons)   # weight 1: no group teacher is asked
    tables = GradeTables(grade, 6, torch.device("cpu"))
    labels = torch.tensor([4, 0, 1, 5, 0])
    targets = tables.position[labels]
    student = torch.randn(5, 4)
    teacher_all = torch.randn(5, 6)                                 # columns: classes 0..5
    distill = distillation("kd", TrainSettings(temperature=3.0))
    got = kd_sum_of(student, {ALL_TEACHER: (torch.arange(5), teacher_all)}, grade, tables, labels, targets,
                    distill, 0, torch.device("cpu"))
    expected = _hand_kd(student, teacher_all[:, [4, 5, 0, 1]], 3.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_mixed_signal_weights_the_all_class_teacher_against_the_group_teachers():
    torch.manual_seed(1)
    w = 0.25
    plan = plan_ed("resnet8", 3, GROUPS, [1, 2, 3], [0, 1, 2], [1, 1, 1], [8, 8], "mixed",
                   all_teacher_weights=[w, w, w])
    grade = plan.grades[1]                                          # classes 0, 1 (group0), 2, 3 (group1)
    assert [lesson.teacher for lesson in grade.lessons] == ["group0", "group1"]
    assert grade.all_teacher.teacher == "all" and grade.all_teacher_weight == w
    tables = GradeTables(grade, 6, torch.device("cpu"))
    labels = torch.tensor([0, 3, 2, 1])
    targets = tables.position[labels]
    student = torch.randn(4, 4)
    rows0, rows1 = torch.tensor([0, 3]), torch.tensor([1, 2])
    t0, t1, t_all = torch.randn(2, 2), torch.randn(2, 2), torch.randn(4, 6)
    distill = distillation("kd", TrainSettings(temperature=4.0))
    got = kd_sum_of(student, {0: (rows0, t0), 1: (rows1, t1), ALL_TEACHER: (torch.arange(4), t_all)}, grade,
                    tables, labels, targets, distill, 0, torch.device("cpu"))
    group = _hand_kd(student[rows0][:, [0, 1]], t0, 4.0) + _hand_kd(student[rows1][:, [2, 3]], t1, 4.0)
    expected = (1 - w) * group + w * _hand_kd(student, t_all[:, [0, 1, 2, 3]], 4.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ed_on_the_all_class_signal_with_no_early_grade_is_kd():
    """0 % early budget and weight 1: one grade, the complete student, the all-class teacher on
    every class: the same lessons' classes and teacher calls as the kd baseline."""
    plan = plan_ed("resnet8", 3, GROUPS, [1, 2, 3], [0, 1, 2], [0, 0, 6], [8, 8], "mixed",
                   all_teacher_weights=[1.0, 1.0, 1.0])
    (grade,) = plan.grades
    kd = plan_single_grade("kd", "resnet8", 3, GROUPS, 6).grades[0]
    assert grade.final and grade.split == 3 and grade.epochs == 6 and grade.first_epoch == 0
    assert grade.class_ids == kd.class_ids and grade.all_teacher.classes == kd.lessons[0].classes


class _Recording:
    """A teacher client that records which teacher was asked about which labels (in-process teachers)."""

    def __init__(self, teachers: dict, train):
        self.teachers, self.train, self.calls = teachers, train, []

    def submit(self, key, images):
        self.calls.append(key)
        return self.teachers[key](images)

    def fetch(self, handle):
        return handle


def _untrained(data, classes, seed):
    from raydistill.models import build_model
    torch.manual_seed(seed)
    model = build_model("resnet8", len(classes))
    model.class_ids.copy_(torch.tensor(classes))
    return FrozenTeacher(model, data.mean, data.std)


@pytest.mark.parametrize("weight,asked", [(0.0, {"group0", "group1"}), (1.0, {"all"}),
                                          (0.5, {"group0", "group1", "all"})])
def test_train_epoch_asks_the_teachers_the_signal_names(tiny_data, weight, asked):
    data = tiny_data
    teachers = {f"group{p}": _untrained(data, g, p) for p, g in enumerate(data.groups)}
    teachers["all"] = _untrained(data, [c for g in data.groups for c in g], 9)
    plan = plan_ed("resnet8", 3, data.groups, [1, 2, 3], [0, 1, 2], [1, 1, 1], [8, 8], "mixed",
                   all_teacher_weights=[weight] * 3)
    grade = plan.grades[1]
    s = TrainSettings(mean=tuple(data.mean), std=tuple(data.std), batch_size=32, augment=False)
    model = grade_model(plan, grade, data.num_classes, s)
    client = _Recording(teachers, data.train)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    metrics = train_epoch(model, optimizer, grade, "mixed", data.train, client, s, __import__(
        "raydistill.distill.engine", fromlist=["TrainContext"]).TrainContext(), 0)
    assert set(client.calls) == asked
    assert metrics["kd"] > 0


def test_alpha_per_grade_is_each_grades_ce_weight(tiny_data):
    """alpha 1 in grade 1 (CE only: loss == ce), 0 in grade 2 (KD only: loss == kd)."""
    from raydistill.distill.engine import TrainContext
    data = tiny_data
    teachers = {f"group{p}": _untrained(data, g, p) for p, g in enumerate(data.groups)}
    plan = plan_ed("resnet8", 3, data.groups, [1, 2, 3], [0, 1, 2], [1, 1, 1], [8, 8], "mixed", alphas=[1.0, 0.0, 0.5])
    s = TrainSettings(mean=tuple(data.mean), std=tuple(data.std), batch_size=32, augment=False, alpha=0.5)
    client = _Recording(teachers, data.train)
    for grade, check in ((plan.grades[0], "ce"), (plan.grades[1], "kd")):
        model = grade_model(plan, grade, data.num_classes, s)
        m = train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01), grade, "mixed", data.train, client, s,
                        TrainContext(), 0)
        assert m["loss"] == pytest.approx(m[check], rel=1e-5), (grade.index, m)


# ---- the config fields -----------------------------------------------------------------------

def test_grade_fractions_of_a_fixed_total():
    exp = tiny_experiment("/tmp/unused").with_overrides(
        ["curriculum.grade_epochs=null", "curriculum.total_epochs=16", "curriculum.grade_fractions=[0.1, 0.2, 0.7]"])
    exp.validate()
    assert exp.grade_epochs() == [2, 3, 11] and exp.total_epochs() == 16   # 1.6 -> 2, 3.2 -> 3, the rest last


def test_a_zero_early_budget_yields_a_plan_without_that_fragment_grade(tiny_data):
    exp = tiny_experiment("/tmp/unused").with_overrides(
        ["curriculum.grade_epochs=null", "curriculum.total_epochs=8", "curriculum.grade_fractions=[0, 0.25, 0.75]"])
    plan = plan_for("ed", exp.validate(), tiny_data.groups)
    assert [g.epochs for g in plan.grades] == [2, 6] and [g.first_epoch for g in plan.grades] == [0, 2]
    assert [g.split for g in plan.grades] == [2, 3] and [g.index for g in plan.grades] == [0, 1]
    assert plan.grades[0].class_ids == [0, 1, 2, 3]                 # group 0 joined grade 2
    none = plan_for("ed", exp.with_overrides(["curriculum.grade_fractions=[0, 0, 1]"]).validate(), tiny_data.groups)
    (grade,) = none.grades
    assert grade.final and grade.epochs == 8 and [lesson.teacher for lesson in grade.lessons] == \
        ["group0", "group1", "group2"]                               # multi_teacher's grade: no curriculum


@pytest.mark.parametrize("overrides,field", [
    (["curriculum.grade_epochs=null", "curriculum.total_epochs=8", "curriculum.grade_fractions=[0.2, 0.2, 0.5]"],
     "curriculum.grade_fractions: expected shares that sum to 1"),
    (["curriculum.grade_epochs=null", "curriculum.total_epochs=8", "curriculum.grade_fractions=[0.5, 0.5, 0]"],
     "curriculum.grade_fractions: expected a last share"),
    (["curriculum.grade_epochs=null", "curriculum.grade_fractions=[0.2, 0.2, 0.6]"], "curriculum.total_epochs"),
    (["curriculum.grade_fractions=[0.2, 0.2, 0.6]", "curriculum.total_epochs=8"], "curriculum.grade_epochs: expected null"),
    (["curriculum.grade_epochs=[1, 1, 0]"], r"curriculum.grade_epochs\[2\]: expected a positive integer"),
    (["curriculum.grade_epochs=[-1, 1, 2]"], r"curriculum.grade_epochs\[0\]: expected a non-negative integer"),
    (["curriculum.alpha=[0.3, 0.3]"], "curriculum.alpha: expected one number or 3"),
    (["curriculum.all_teacher_weight=1.5"], "curriculum.all_teacher_weight: expected a number in"),
    (["curriculum.all_teacher_weight=[0, 0.5, 2]"], r"curriculum.all_teacher_weight\[2\]"),
])
def test_bad_budgets_and_signals_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        tiny_experiment("/tmp/unused").with_overrides(overrides).validate()


def test_teachers_needed_follow_the_signal():
    assert teachers_needed(["ed"], 3, [0.0] * 3) == ["group0", "group1", "group2"]
    assert teachers_needed(["ed"], 3, [1.0, 1.0, 1.0]) == ["all"]
    assert teachers_needed(["ed"], 3, [0.0, 0.5, 1.0]) == ["group0", "group1", "group2", "all"]
    assert teachers_needed(["ed", "multi_teacher"], 2, [1.0, 1.0]) == ["group0", "group1", "all"]
    exp = tiny_experiment("/tmp/unused").with_overrides(["curriculum.all_teacher_weight=1"]).validate()
    from raydistill.pipeline.graph import stage_graph
    assert stage_graph(exp, 3) == {"teacher:all": [], "method:ed": ["teacher:all"]}


@pytest.mark.slow   # trains tiny teachers and ed, then resumes the finished run
def test_a_local_run_on_the_mixed_signal_trains_loads_and_lists_the_all_class_teacher(tmp_path):
    """`--local` (pipeline.local) asked teachers_needed without the signal's weights, so an ed run with
    all_teacher_weight above 0 trained only the group teachers, and its cached soft labels failed with
    "no teacher 'all' in the cache" at ed's first batch (the searched-curricula confirmation)."""
    from raydistill.pipeline.local import run
    exp = tiny_experiment(tmp_path, **{"methods": "[ed]", "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                       "data.train_per_class": 30, "data.test_per_class": 10,
                                       "curriculum.all_teacher_weight": 0.5, "teachers.soft_labels": "cache",
                                       "teachers.cache_draws": 2})
    result = run(exp, progress=None)
    assert list(result.teachers) == ["group0", "group1", "group2", "all"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    again = run(exp, progress=None)   # everything done: the resumed result lists the same teachers
    assert list(again.teachers) == ["group0", "group1", "group2", "all"]
