"""Budget accounting: images seen and student training FLOPs per method, ED's fragments counted at
their own cost, and the equal-images ED variant (issue 25: a comparison must say what is equal)."""
import pytest

from conftest import tiny_experiment
from raydistill.distill.budget import grade_train_flops, history_budget, plan_flops_per_image, planned_images
from raydistill.distill.curriculum import equal_image_epochs, plan_for
from raydistill.pipeline.local import run

GROUPS = [[0, 1], [2, 3], [4, 5]]


def plans(tmp_path, **overrides):
    exp = tiny_experiment(tmp_path, **{"curriculum.grade_epochs": "[1,1,2]", **overrides})
    return {m: plan_for(m, exp, GROUPS) for m in ("ed", "scratch", "kd", "multi_teacher")}


def test_fragments_cost_less_than_the_complete_student(tmp_path):
    p = plans(tmp_path)
    ed = plan_flops_per_image(p["ed"], 32)
    full = plan_flops_per_image(p["scratch"], 32)[0]
    assert ed[0] < ed[1] < ed[2] and ed[0] < full
    # the last grade is the complete student: the same network as every baseline's
    assert ed[2] == pytest.approx(full, rel=1e-6)
    assert all(plan_flops_per_image(p[m], 32)[0] == full for m in ("kd", "multi_teacher"))
    # forward + backward of resnet8 at 32 px is tens of MFLOPs (forward alone ~25 MFLOP)
    assert 40e6 < full < 120e6
    assert grade_train_flops(p["scratch"], p["scratch"].grades[0], 64) == pytest.approx(4 * full, rel=0.02)


def test_planned_images_per_method(tmp_path):
    p = plans(tmp_path)
    counts = [100] * 6
    assert planned_images(p["ed"], counts) == [1 * 200, 1 * 400, 2 * 600]
    for m in ("scratch", "kd", "multi_teacher"):
        assert planned_images(p[m], counts) == [4 * 600]


def test_history_budget_sums_each_grade_at_its_own_cost(tmp_path):
    plan = plans(tmp_path)["ed"]
    flops = {0: 10.0, 1: 20.0, 2: 30.0}
    history = [{"method": "ed", "grade": g, "train_images": n} for g, n in ((1, 200), (2, 400), (3, 600), (3, 600))]
    history.append({"method": "other", "grade": 1, "train_images": 999})
    assert history_budget(plan, history, flops) == {"train_images": 1800, "train_flops": 200 * 10 + 400 * 20 + 1200 * 30}


def test_equal_image_epochs():
    assert equal_image_epochs([2, 2, 4], [3, 3, 4]) == [2, 2, 6]     # 52,200 -> 70,200 of 72,000 images
    assert equal_image_epochs([1, 1, 6], [3, 3, 4]) == [1, 1, 7]
    assert equal_image_epochs([1, 1, 1], [2, 2, 2]) == [1, 1, 2]
    assert equal_image_epochs([3], [10]) == [3]                       # one grade: nothing to make up


@pytest.mark.slow   # a whole local run
def test_equal_images_plan_and_run_summary(tmp_path):
    """A run reports images and FLOPs per method; ed with equal_images sees a baseline's images."""
    p = plans(tmp_path, **{"curriculum.equal_images": "true"})
    assert [g.epochs for g in p["ed"].grades] == [1, 1, 3]   # 2+4+12=18 class-epochs vs 24: +1 epoch of 6 classes
    assert p["scratch"].total_epochs == 4                    # the baselines keep sum(grade_epochs)
    exp = tiny_experiment(tmp_path / "run", **{"methods": "[ed,scratch]", "teachers.epochs": 1,
                                               "curriculum.grade_epochs": "[1,1,1]", "test_every_epoch": "false"})
    result = run(exp, progress=None)
    tested = [(h["method"], h["epoch"]) for h in result.history if h["test_acc"] == h["test_acc"]]   # not NaN
    assert tested == [("ed", 1), ("ed", 2), ("ed", 3), ("scratch", 3)]   # each grade's last epoch only
    ed, scratch = result.methods["ed"], result.methods["scratch"]
    train = len(result.history) and sum(h["train_images"] for h in result.history if h["method"] == "scratch")
    assert scratch["train_images"] == train
    assert ed["train_images"] < scratch["train_images"]
    assert ed["train_flops"] < scratch["train_flops"] * ed["train_images"] / scratch["train_images"]
    assert "TFLOP" in result.table() and f"{scratch['train_images']:,}" in result.table()
