"""Curriculum search with Ray Tune: space files, validation before Ray, one real smoke search.

The smoke search (4 trials = every teacher order x every split tuple of a 2-group resnet8
curriculum on tiny built-in data) shares the session's Ray instance; everything else runs without Ray.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


# ---- no Ray ----------------------------------------------------------------------------------

def test_shipped_spaces_load_and_sample_distinct_valid_trials():
    from raydistill.search import load_space, shipped_spaces
    assert {"smoke", "cifar10_short", "cifar100_resnet20"} <= set(shipped_spaces())
    for name in ("smoke", "cifar10_short", "cifar100_resnet20"):
        space = load_space(name)
        trials = space.candidates()
        keys = {json.dumps(t, sort_keys=True) for t in trials}
        assert len(keys) == len(trials) == space.samples, name
        for values in trials:
            exp = space.experiment_for(values)   # validates
            splits = exp.splits()
            assert all(a < b for a, b in zip(splits, splits[1:])), (name, splits)
            assert sorted(exp.order()) == list(range(exp.num_groups()))
    assert space.candidates() == load_space("cifar100_resnet20").candidates(), "sampling is seeded"
    short = load_space("cifar10_short")
    splits_dim = next(d for d in short.dimensions if d.path == "curriculum.splits")
    assert len(splits_dim.values) == 10 and [1, 2, 6] in splits_dim.values and [4, 5, 6] in splits_dim.values


def test_space_smaller_than_samples_is_refused(tmp_path):
    from raydistill.search import SpaceError, load_space
    space = load_space("smoke")
    with pytest.raises(SpaceError, match=r"only 4 distinct valid configuration.*asked for 5"):
        space.candidates(5)


def test_distillation_loss_and_its_parameters_are_search_dimensions(tmp_path):
    """`distill.loss` and a loss's parameters are dimensions like any other: every combination is
    sampled, each trial's ed plan distils with its loss, and an invalid candidate names the dimension."""
    from raydistill.distill.curriculum import plan_for
    from raydistill.search.space import SpaceError, space_from_dict
    from raydistill.search.trainable import trial_experiment
    base = {"data": {"source": "builtin", "num_classes": 6, "ratio": "1:1:1"}, "student": {"arch": "resnet8"}}
    space = space_from_dict({"base": base, "samples": 6, "search": {
        "distill.loss": {"choice": ["kd", "dkd", "lskd"]}, "distill.dkd.beta": {"choice": [1.0, 8.0]}}})
    trials = space.candidates()
    assert {(t["distill.loss"], t["distill.dkd.beta"]) for t in trials} == {
        (loss, beta) for loss in ("kd", "dkd", "lskd") for beta in (1.0, 8.0)}
    for values in trials:
        exp = trial_experiment(space.base.to_dict(), values, {}, str(tmp_path), 0, 1.0)
        assert exp.methods == ["ed"] and plan_for("ed", exp, [[0, 1], [2, 3], [4, 5]]).loss == values["distill.loss"]
        assert exp.loss_params()["dkd"]["beta"] == values["distill.dkd.beta"]
    for dimension, pattern in (({"distill.dkd.beta": {"uniform": [-1, 4]}},
                                r"search\.distill\.dkd\.beta: candidate -1\.0 is invalid .*distill\.dkd\.beta: "
                                r"expected a non-negative number"),
                               ({"distill.loss": {"choice": ["kd", "hinton"]}},
                                r"search\.distill\.loss: candidate 'hinton' is invalid .*distill\.loss: expected one of")):
        with pytest.raises(SpaceError, match=pattern):
            space_from_dict({"base": base, "search": dimension})


BAD_SPACES = {   # the dimension, and what its error must say
    "splits": ("curriculum.splits: {choice: [[1, 2, 3], [2, 1, 3]]}",   # cannot be increasing
               r"search\.curriculum\.splits: candidate \[2, 1, 3\] is invalid .*strictly increasing"),
    "path": ("curriculum.temprature: {choice: [2, 4]}",                  # unknown parameter path
             r"search\.curriculum\.temprature: unknown parameter path .*valid there: .*temperature"),
    "order": ("curriculum.order: {choice: [[0, 1, 2], [0, 1]]}",          # wrong length
              r"search\.curriculum\.order: candidate \[0, 1\] is invalid .*permutation of \[0, 1, 2\]"),
}


def test_invalid_spaces_fail_with_clear_messages_before_ray_starts(tmp_path):
    """Through the CLI in a fresh interpreter: exit code 2, the file and dimension named, Ray never imported."""
    import re
    files = {}
    for name, (dimension, _) in BAD_SPACES.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text("base: {data: {source: builtin, num_classes: 6, ratio: '1:1:1'}, "
                               f"student: {{arch: resnet8}}}}\nsearch:\n  {dimension}\n")
    script = textwrap.dedent(f"""
        import json, sys
        from raydistill.cli import main
        codes = {{n: main(["tune", p]) for n, p in {json.dumps({k: str(v) for k, v in files.items()})}.items()}}
        print(json.dumps({{"codes": codes, "ray_imported": "ray" in sys.modules}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"codes": {name: 2 for name in files}, "ray_imported": False}, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(BAD_SPACES), proc.stderr
    for (name, (_, pattern)), line in zip(BAD_SPACES.items(), errors):
        assert line.startswith(f"raydistill: error: {files[name]}: search."), line
        assert re.search(pattern, line), line


def test_valid_splits_impossible_and_unsearchable_fields(tmp_path):
    from raydistill.search import SpaceError
    from raydistill.search.space import space_from_dict, valid_splits
    from raydistill.config import Experiment
    exp = Experiment.from_dict({"data": {"ratio": "1:1:1:1", "num_classes": 8}, "student": {"arch": "resnet8"}})
    with pytest.raises(SpaceError, match=r"no strictly increasing split points exist: 4 grades .*resnet8 has 3 blocks"):
        valid_splits(exp, "x.yaml: search.curriculum.splits")
    with pytest.raises(SpaceError, match=r"x.yaml: search.teachers.epochs: cannot be searched: teachers are trained once"):
        space_from_dict({"base": {}, "search": {"teachers.epochs": {"choice": [1, 2]}}}, source="x.yaml")
    with pytest.raises(SpaceError, match=r"x.yaml: search.optimizer.lr: loguniform: expected \[low, high\]"):
        space_from_dict({"base": {}, "search": {"optimizer.lr": {"loguniform": [0, 1]}}}, source="x.yaml")


def test_asha_judges_a_restored_trial_at_its_reported_epoch():
    """A trial restored mid-run reports epoch 2 as its first Tune iteration: ASHA must compare it
    at the epoch-2 rung (and stop it, it is the weakest), not treat it as iteration 1."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from raydistill.search.trainable import curriculum_asha
    asha = curriculum_asha(max_t=8, grace_period=2, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")
    trials = [Trial("__fake", stub=True) for _ in range(2)]
    for t in trials:
        asha.on_trial_add(None, t)
    common = {"epochs_planned": 8}
    assert asha.on_trial_result(None, trials[0], {"epoch": 2, "training_iteration": 2, "val_acc": 0.9, **common}) \
        == TrialScheduler.CONTINUE
    restored = {"epoch": 2, "training_iteration": 1, "val_acc": 0.05, **common}
    assert asha.on_trial_result(None, trials[1], restored) == TrialScheduler.STOP


def test_trial_rows_tell_an_asha_stop_from_an_interrupted_trial():
    from raydistill.search.results import trial_rows
    from raydistill.search.space import load_space
    space = load_space("smoke")
    candidates = space.candidates()[:3]
    results = [{"index": 0, "metrics": {"epoch": 1, "val_acc": 0.5}, "error": None, "done": True},
               {"index": 1, "metrics": {"epoch": 1, "val_acc": 0.5}, "error": None, "done": False}]
    rows = trial_rows(space, results, candidates, "asha")
    assert [r["stop_reason"] for r in rows] == ["stopped by asha after epoch 1", "interrupted after epoch 1",
                                                "not run"]


# ---- the smoke search (Ray) ------------------------------------------------------------------

def test_smoke_search_trains_teachers_once_and_exports_a_runnable_best(ray_session, tmp_path):
    import pandas as pd
    import raydistill
    from raydistill import Experiment
    from raydistill.cli import main
    from raydistill.search.teachers import training_events

    result = raydistill.tune("smoke", output=str(tmp_path), progress=None)
    search_dir = tmp_path / "smoke"

    # teachers: trained exactly once (one training event per group), every trial loaded them
    events = training_events(search_dir)
    assert sorted(e["key"] for e in events) == ["group0", "group1"]
    trial_dirs = sorted((search_dir / "trials").iterdir())
    assert [d.name for d in trial_dirs] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    for d in trial_dirs:
        teachers = json.loads((d / "metrics.json").read_text())["teachers"]
        assert {k: Path(v["source"]).name for k, v in teachers.items()} == {"group0": "group0.pt",
                                                                             "group1": "group1.pt"}, d

    # the table: 4 rows, 4 distinct configurations (all of order x splits), last-epoch numbers
    table = pd.read_parquet(search_dir / "trials.parquet")
    assert len(table) == 4
    configs = {(s, o) for s, o in zip(table["curriculum.splits"], table["curriculum.order"])}
    assert configs == {(s, o) for s in ("[1, 3]", "[2, 3]") for o in ("[0, 1]", "[1, 0]")}
    assert set(table["epochs_planned"]) == {2}
    completed = table[table["stop_reason"] == "completed"]
    assert len(completed) >= 1 and (completed["epochs_run"] == 2).all()
    assert table["val_acc"].between(0, 1).all() and table["test_acc"].between(0, 1).all()
    stopped = table[table["stop_reason"] != "completed"]
    assert all(r.startswith("stopped by asha") for r in stopped["stop_reason"]), list(stopped["stop_reason"])

    # the best: highest last-epoch VALIDATION accuracy among completed trials
    best = completed.sort_values("val_acc", ascending=False, kind="stable").iloc[0]
    assert result.best["trial"] == best["trial"] and result.best_config == search_dir / "best.yaml"
    assert (search_dir / "trials" / best["trial"] / "summary.json").is_file(), "a completed trial finishes its run"

    # same command again: the Tuner is restored, nothing is retrained or rerun
    again = raydistill.tune("smoke", output=str(tmp_path), progress=None)
    assert len(training_events(search_dir)) == 2
    assert again.table[["trial", "val_acc", "stop_reason"]].equals(result.table[["trial", "val_acc", "stop_reason"]])

    # the exported best runs with `raydistill run --config` and reproduces the trial's curriculum;
    # its paths are absolute (Ray Train workers load teachers from their own working directory)
    exported = Experiment.from_yaml(result.best_config)
    assert all(Path(p).is_absolute() for p in exported.teachers.checkpoints.values())
    assert main(["run", "--config", str(result.best_config)]) == 0
    summary = json.loads((search_dir / "best" / "summary.json").read_text())
    ran = Experiment.from_yaml(search_dir / "best" / "config.yaml")
    assert ran.splits() == json.loads(best["curriculum.splits"]) and ran.order() == json.loads(best["curriculum.order"])
    assert all(Path(t["source"]).parent == search_dir / "teachers" for t in summary["teachers"].values())
    assert summary["methods"]["ed"]["final_val_acc"] == pytest.approx(best["val_acc"], abs=1e-9)
    assert len(training_events(search_dir)) == 2


def test_search_cache_is_built_once_and_trials_load_it(tmp_path):
    """`teachers.soft_labels: cache` in a search: the search builds one cache before the trials
    (shared_soft_labels), and a trial's run finds it under its own output.dir and only loads it."""
    from raydistill.runner import run
    from raydistill.search.teachers import prepare_search_teachers
    from raydistill.search.trainable import trial_experiment
    from raydistill.search.tuner import shared_soft_labels
    from raydistill.workspace import prepare_data
    search_dir = tmp_path / "search"
    base = tiny_experiment(search_dir, **{"teachers.soft_labels": "cache", "teachers.epochs": 1,
                                          "teachers.cache_draws": 2})
    teachers = prepare_search_teachers(base, search_dir, lambda _m: None)
    built = []
    shared_soft_labels(base, prepare_data(base), teachers, search_dir / "trials", built.append)
    assert any("building cache" in line for line in built), built
    trial = trial_experiment(base.to_dict(), {"curriculum.grade_epochs": [1, 1, 1]}, teachers,
                             str(search_dir / "trials"), 0, 1.0)
    seen = []
    result = run(trial, progress=seen.append)
    assert any("soft labels: cache" in line and line.endswith("loaded") for line in seen), seen
    assert not any("building" in line for line in seen)
    assert result.methods["ed"]["epochs"] == 3
    assert len(list((search_dir / "trials" / "softlabels").iterdir())) == 1
