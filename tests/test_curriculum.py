import pytest

from raydistill.distill.curriculum import CurriculumError, plan_ed, plan_single_grade, teachers_needed

GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_ed_plan_grades_grow_in_order():
    plan = plan_ed("resnet20", 9, GROUPS, [3, 6, 9], [2, 0, 1], [5, 2, 3], [64, 32])
    assert [g.split for g in plan.grades] == [3, 6, 9]
    assert [g.first_epoch for g in plan.grades] == [0, 5, 7] and plan.total_epochs == 10
    assert plan.grades[0].class_ids == [6, 7, 8, 9]
    assert plan.grades[1].class_ids == [6, 7, 8, 9, 0, 1, 2]
    assert sorted(plan.grades[2].class_ids) == list(range(10))
    assert [g.head_width for g in plan.grades] == [64, 32, None] and plan.grades[-1].final
    assert [lesson.teacher for lesson in plan.grades[2].lessons] == ["group2", "group0", "group1"]
    assert plan.grade_at(6).index == 1


@pytest.mark.parametrize("splits", [[3, 3, 9], [6, 3, 9], [0, 3, 9], [3, 6, 10], [3, 6, 8], [3, 9]])
def test_rejects_bad_split_points(splits):
    with pytest.raises(CurriculumError, match="splits"):
        plan_ed("resnet20", 9, GROUPS, splits, [0, 1, 2], [1, 1, 1], [64, 64])


@pytest.mark.parametrize("order", [[0, 1], [0, 0, 1], [1, 2, 3], [0, 1, 2, 3]])
def test_rejects_order_that_is_not_a_permutation(order):
    with pytest.raises(CurriculumError, match="order"):
        plan_ed("resnet20", 9, GROUPS, [3, 6, 9], order, [1, 1, 1], [64, 64])


def test_baselines_are_single_grade_complete_students():
    for method, teachers in (("scratch", [None]), ("kd", ["all"]), ("multi_teacher", ["group0", "group1", "group2"])):
        plan = plan_single_grade(method, "resnet20", 9, GROUPS, 7)
        (grade,) = plan.grades
        assert grade.final and grade.split == 9 and grade.epochs == 7
        assert [lesson.teacher for lesson in grade.lessons] == teachers
        assert sorted(grade.class_ids) == list(range(10))


def test_teachers_needed():
    assert teachers_needed(["scratch"], 3, [0.0] * 3) == []
    assert teachers_needed(["ed", "kd"], 2, [0.0] * 2) == ["group0", "group1", "all"]
