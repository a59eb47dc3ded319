"""Methods combined with distillation losses: `ed+dkd`-style entries, the sliced variants' target
positions, and a run of combinations end to end."""
from dataclasses import replace

import pytest
import torch

from conftest import tiny_experiment
from raydistill.config import ConfigError, Experiment
from raydistill.data import ImageSet
from raydistill.distill.curriculum import plan_ed, plan_for, plan_single_grade, teachers_needed
from raydistill.distill.engine import TrainSettings, train_plan
from raydistill.distill.losses import LOSSES, dkd
from raydistill.pipeline.summary import format_table
from raydistill.pipeline.local import run

GROUPS = [[4, 1], [0, 5], [3, 2]]    # non-contiguous class groups


class OracleTeachers:
    """Group teachers that know the answer: each image carries its label in its pixels, and teacher
    p puts its largest logit on that class in its own (group-local) order."""

    def submit(self, key, images, index=None, draw=None):
        classes = GROUPS[int(key.removeprefix("group"))]
        labels = images[:, 0, 0, 0].long() // 40
        logits = torch.full((len(images), len(classes)), -2.0)
        logits[torch.arange(len(images)), torch.tensor([classes.index(int(y)) for y in labels])] = 3.0
        return logits

    def fetch(self, handle):
        return handle


def labelled_images(per_class=4):
    labels = torch.arange(6).repeat_interleave(per_class)
    images = (labels * 40).to(torch.uint8)[:, None, None, None].expand(-1, 3, 16, 16).clone()
    return ImageSet(images, labels, [str(c) for c in range(6)])


def test_sliced_losses_get_the_target_position_inside_the_slice(monkeypatch):
    """With a non-identity curriculum.order and non-contiguous groups, every sliced loss call gets
    the group's slice of the student's logits and the sample's target position inside that slice
    (where the group's teacher puts its answer), for ed and multi_teacher alike."""
    calls = []

    def probe(student, teacher, target, *, temperature):
        calls.append((student.shape[1], teacher, target))
        return dkd(student, teacher, target, temperature=temperature, alpha=1.0, beta=1.0)

    monkeypatch.setitem(LOSSES, "probe", probe)
    data = labelled_images()
    s = TrainSettings(batch_size=8, augment=False, schedule="constant", lr=0.01, mean=(0.5,) * 3, std=(0.25,) * 3)
    ed = plan_ed("resnet8", 3, GROUPS, [1, 2, 3], [2, 0, 1], [1, 1, 1], [8, 8], pass_mode="mixed")
    multi = plan_single_grade("multi_teacher", "resnet8", 3, GROUPS, 1)
    assert [c for lesson in ed.grades[-1].lessons for c in lesson.classes] == [3, 2, 4, 1, 0, 5]
    for plan in (ed, multi):
        calls.clear()
        _, history = train_plan(replace(plan, loss="probe"), data, data, None, OracleTeachers(), s)
        assert all(torch.isfinite(torch.tensor(h["kd"])) and h["kd"] > 0 for h in history)
        # every sample of an active group, once per epoch
        assert sum(len(t) for _, _, t in calls) == sum(4 * g.num_classes for g in plan.grades)
        for width, teacher, target in calls:
            assert width == teacher.shape[1] == 2
            assert torch.equal(target, teacher.argmax(1))


def test_method_entries_name_their_loss(tmp_path):
    exp = tiny_experiment(tmp_path, **{"methods": "[ed, ed+dkd, kd+lskd, scratch]", "distill.loss": "lskd"}).validate()
    groups = [[0, 1], [2, 3], [4, 5]]
    plans = {m: plan_for(m, exp, groups) for m in exp.methods}
    assert {m: (p.method, p.loss) for m, p in plans.items()} == {
        "ed": ("ed", "lskd"), "ed+dkd": ("ed+dkd", "dkd"), "kd+lskd": ("kd+lskd", "lskd"),
        "scratch": ("scratch", "lskd")}
    assert len(plans["ed+dkd"].grades) == 3 and plans["kd+lskd"].grades[0].lessons[0].teacher == "all"
    assert teachers_needed(["kd+dkd"], 3, [0.0]) == ["all"] and teachers_needed(["ed+lskd"], 2, [0.0]) == ["group0", "group1"]
    summary = {"final_test_acc": 0.5, "final_val_acc": 0.5, "params": 1, "epochs": 1, "wall_s": 1.0, "grades": []}
    table = format_table({"ed": {**summary, "loss": "lskd"}, "ed+dkd": {**summary, "loss": "dkd"},
                          "kd": {**summary, "loss": "kd"}, "scratch": {**summary, "loss": None}})
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["ed+lskd", "ed+dkd", "kd", "scratch"]


def test_loss_parameters_reach_the_engine(tmp_path):
    exp = tiny_experiment(tmp_path, **{"distill.dkd.beta": 2.5, "distill.dkd.temperature": 3}).validate()
    params = exp.loss_params()
    assert params["dkd"] == {"alpha": 1.0, "beta": 2.5, "warmup": 20, "temperature": 3.0}
    assert params["kd"] == {} and params["lskd"] == {"temperature": 2.0}   # kd: curriculum.temperature
    (tmp_path / "x.yaml").write_text(exp.to_yaml())
    assert Experiment.from_yaml(tmp_path / "x.yaml").distill == exp.distill


@pytest.mark.slow   # local runs of several method+loss combinations
def test_local_run_of_method_loss_combinations_with_cached_soft_labels(tmp_path):
    """ed+dkd and multi_teacher+lskd train end to end from the soft-label cache (float16), and the
    results, checkpoints and table carry the combined names."""
    exp = tiny_experiment(tmp_path, **{"methods": "[ed+dkd, multi_teacher+lskd, scratch]", "teachers.epochs": 1,
                                       "curriculum.grade_epochs": "[1,1,1]", "data.train_per_class": 40,
                                       "data.test_per_class": 10, "teachers.soft_labels": "cache",
                                       "teachers.cache_draws": 2, "distill.dkd.warmup": 2})
    result = run(exp, progress=None)
    assert list(result.methods) == ["ed+dkd", "multi_teacher+lskd", "scratch"]
    assert [result.methods[m]["loss"] for m in result.methods] == ["dkd", "lskd", None]
    for method in ("ed+dkd", "multi_teacher+lskd"):
        rows = [h for h in result.history if h["method"] == method]
        assert len(rows) == 3 and all(h["kd"] > 0 for h in rows)
        assert (result.run_dir / "checkpoints" / f"{method}.pt").is_file()
    table = result.table()
    assert "ed+dkd" in table and "multi_teacher+lskd" in table
    with pytest.raises(ConfigError, match="teachers.cache_format: expected float16 when a method distils with dkd"):
        run(exp.with_overrides(["teachers.cache_format=topk"]), progress=None)


@pytest.mark.slow   # Ray Train run
def test_ray_train_run_of_a_method_loss_combination(ray_session, tmp_path):
    """The Ray backend serves teachers to a `kd+lskd` stage (its loss term is on every epoch) and
    names its files and results after the entry."""
    from raydistill.distributed.trainer import run_distributed
    exp = tiny_experiment(tmp_path, **{"methods": "[kd+lskd]", "teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                       "data.train_per_class": 40, "data.test_per_class": 10})
    result = run_distributed(exp, progress=None)
    assert list(result.methods) == ["kd+lskd"] and result.methods["kd+lskd"]["loss"] == "lskd"
    assert list(result.teachers) == ["all"]
    rows = [h for h in result.history if h["method"] == "kd+lskd"]
    assert len(rows) == 3 and all(h["kd"] > 0 for h in rows)
    assert (result.run_dir / "checkpoints" / "kd+lskd.pt").is_file()
