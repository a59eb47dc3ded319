"""Grades that end on a plateau (issue 34, part 1): a grade ends at the epoch its validation series
says, the last grade absorbs the epochs left, the per-grade record says what each grade took, and a
run resumed mid-grade switches at the same epoch as an uninterrupted one."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import first_per_class, tiny_experiment
from raydistill.config import ConfigError
from raydistill.distill import engine
from raydistill.distill.curriculum import plan_ed
from raydistill.distill.engine import TrainSettings, TrainState, train_plan
from raydistill.distill.plateau import Plateau, ended_early

# Validation accuracy (on the classes the grade has seen) per global epoch, for a plan of at most
# [4, 4, 2] epochs, patience 2, min_delta 0.01:
SERIES = [0.50, 0.505, 0.50,           # grade 1: epochs 2 and 3 do not beat 0.50 by > 0.01 -> ends after 3 of 4
          0.30, 0.40, 0.50, 0.60,      # grade 2: improves every epoch -> runs its maximum of 4
          0.70, 0.70, 0.70]            # grade 3: the 2 planned + the 1 grade 1 left
GRADES = [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


def test_plateau_counts_epochs_without_an_improvement_above_min_delta():
    p = Plateau(patience=2, min_delta=0.01)
    assert [p.update(v) for v in (0.5, 0.505, 0.52, 0.525, 0.53)] == [False, False, False, False, True]
    assert (p.best, p.stale) == (0.52, 2)
    p.reset()
    assert not p.update(0.1) and p.best == 0.1


def test_ending_a_grade_early_gives_its_epochs_to_the_last_grade():
    plan = plan_ed("resnet8", 3, [[0, 1], [2, 3], [4, 5]], [1, 2, 3], [0, 1, 2], [4, 4, 2], [16, 16])
    early = ended_early(plan, 0, 3)
    assert [(g.first_epoch, g.epochs) for g in early.grades] == [(0, 3), (3, 4), (7, 3)]
    assert early.total_epochs == plan.total_epochs == 10
    with pytest.raises(ValueError, match="grade 3"):
        ended_early(plan, 2, 1)   # the last grade never ends early: it is the budget's remainder


@pytest.fixture
def hand_made_validation(monkeypatch):
    """The engine's validation accuracy on the seen classes replaced by SERIES (by global epoch,
    counted from `start`); everything else (training, test, accuracy over all classes) is real."""
    real = engine.evaluate
    clock = {"epoch": 0}

    def evaluate(model, data, class_ids, s, ctx, task_class_ids=None):
        result = real(model, data, class_ids, s, ctx, task_class_ids)
        if task_class_ids is None:      # the test set
            return result
        value = SERIES[clock["epoch"]]
        clock["epoch"] += 1
        return value, result[1]

    monkeypatch.setattr(engine, "evaluate", evaluate)
    return clock


@pytest.fixture(scope="module")
def few(tiny_data):
    """The tiny data with 24 training samples per class: the validation series is hand-made, so
    what is checked (where grades end, identical training on resume) needs no more."""
    return first_per_class(tiny_data, 24)


def _plateau_run(data, **kw):
    plan = plan_ed("resnet8", 3, data.groups, [1, 2, 3], [0, 1, 2], [4, 4, 2], [16, 16], pass_mode="mixed")
    s = TrainSettings(mean=tuple(data.mean), std=tuple(data.std), lr=0.05, batch_size=32, schedule="constant",
                      switch="plateau", patience=2, min_delta=0.01, test_every_epoch=False)
    return train_plan(plan, data.train, data.val, data.test, None, s, **kw)


@pytest.mark.slow   # 10 + 8 + 5 tiny epochs
def test_a_grade_ends_where_the_validation_series_says_and_resumes_there(few, hand_made_validation):
    states = {}
    full_model, full = _plateau_run(few, on_epoch_end=lambda m, make: states.__setitem__(m["epoch"], make()))
    assert [h["grade"] for h in full] == GRADES
    assert [h["val_acc"] for h in full] == SERIES
    # with test_every_epoch false, test runs at each grade's last epoch: the switched one included
    assert [not math.isnan(h["test_acc"]) for h in full] == [e in (3, 7, 10) for e in range(1, 11)]
    assert states[3].grade_epochs == [3, 4, 3] and states[2].grade_epochs == [4, 4, 2]
    assert states[2].plateau == {"best": 0.5, "stale": 1}
    # mid grade 1 (one stale epoch) and mid grade 2 (after the switch): the same switches, the same training
    for stopped_after in (2, 5):
        hand_made_validation["epoch"] = stopped_after
        state = TrainState.from_dict(states[stopped_after].to_dict())
        model, resumed = _plateau_run(few, resume=state)
        assert [h["grade"] for h in resumed] == GRADES
        assert [h["loss"] for h in resumed[stopped_after:]] == [h["loss"] for h in full[stopped_after:]]
        for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
            assert torch.equal(a, b), name


def test_bad_plateau_settings_are_refused_naming_the_field(tmp_path):
    for override, field in (({"curriculum.switch": "plateau", "curriculum.patience": 0}, "curriculum.patience"),
                            ({"curriculum.switch": "plateau", "curriculum.min_delta": -0.01}, "curriculum.min_delta"),
                            ({"curriculum.switch": "sometimes"}, "curriculum.switch"),
                            ({"curriculum.switch": "plateau", "data.val_fraction": 0}, "data.val_fraction")):
        with pytest.raises(ConfigError) as err:
            tiny_experiment(tmp_path, **override).validate()
        assert str(err.value).startswith(f"{field}: expected"), err.value
        assert "\n" not in str(err.value)


@pytest.mark.slow   # trains tiny teachers and ed, twice
def test_a_plateau_run_interrupted_on_a_ray_worker_resumes_locally_with_the_same_switches(tmp_path):
    """min_delta 1 (no epoch can improve by more than all of accuracy) and patience 1: every grade but
    the last ends after its second epoch, whatever the machine's numbers. The Ray executors' worker
    loop (a task's body, run here) is stopped in grade 2; `--local` resumes it."""
    from test_resume import Interrupt, _started, _stop_at, _worker
    from raydistill.pipeline.local import run
    exp = tiny_experiment(tmp_path, methods="[ed]", **{
        "teachers.epochs": 1, "curriculum.grade_epochs": "[3,3,2]", "data.train_per_class": 30,
        "data.test_per_class": 10, "curriculum.switch": "plateau", "curriculum.patience": 1,
        "curriculum.min_delta": 1.0})
    exp, out, packed = _started(exp)
    with pytest.raises(Interrupt):
        _worker(exp, "train", None, packed, _stop_at("method:ed", 3))
    lines = []
    result = run(exp, progress=lines.append)
    assert [h["grade"] for h in result.history] == [1, 1, 2, 2, 3, 3, 3, 3]
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())["methods"]["ed"]
    assert [g["epochs"] for g in summary["grades"]] == [2, 2, 4] and summary["epochs"] == 8
    metrics = json.loads((tmp_path / "tiny" / "metrics.json").read_text())
    assert [g["epochs"] for g in metrics["methods"]["ed"]["grades"]] == [2, 2, 4]
    per_grade = result.table().split("ed per grade")[1].splitlines()[2:5]   # the printed per-grade table
    assert [int(row.split()[3]) for row in per_grade] == [2, 2, 4], per_grade
