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
from test_cluster import BUCKET, s3  # noqa: F401  (the local S3 server fixture)

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


def test_an_unusable_output_or_another_search_in_its_directory_is_refused_before_ray(tmp_path):
    """`output` that cannot hold the search directory, and a directory holding another search
    (its space.json differs), each fail with one SpaceError before Ray is started; the other
    search's files are left as they were."""
    from raydistill.search.space import SpaceError
    from raydistill.search.tuner import tune
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SpaceError, match=f"output: cannot create the search directory {blocker}/smoke"):
        tune("smoke", output=str(blocker), progress=None)
    other = tmp_path / "tune" / "smoke"
    other.mkdir(parents=True)
    (other / "space.json").write_text(json.dumps({"base": {"name": "another"}}))
    with pytest.raises(SpaceError, match=f"search directory {other} holds a different search .changed: "):
        tune("smoke", output=str(tmp_path / "tune"), progress=None)
    assert json.loads((other / "space.json").read_text()) == {"base": {"name": "another"}}
    assert sorted(p.name for p in other.iterdir()) == ["space.json"]


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


def wired_search(raw: dict, concurrent: int = 2):
    """The project's own TuneConfig for space `raw` (search_setup), with its metric and mode handed
    to the scheduler and the searcher by the same helpers `tune.run` uses. They return False when
    a scheduler or searcher was built with a metric of its own, which Tune refuses."""
    from ray.tune.schedulers.util import _set_search_properties_backwards_compatible as scheduler_props
    from ray.tune.search.util import _set_search_properties_backwards_compatible as searcher_props
    from raydistill.search.space import space_from_dict
    from raydistill.search.tuner import search_setup
    space = space_from_dict(raw)
    param_space, config = search_setup(space, [] if space.model_based else space.candidates(), concurrent)
    assert scheduler_props(config.scheduler.set_search_properties, config.metric, config.mode)
    if config.search_alg is not None:
        assert searcher_props(config.search_alg.set_search_properties, config.metric, config.mode, param_space)
    return config


def grades_space(**extra) -> dict:
    """The tiny 2-group space with searched grade_epochs (both plans 8 epochs) and ASHA's first rung
    at epoch 4, where one trial may be in grade 1 and another in grade 2."""
    raw = tiny_space(**extra)
    raw["search"] = {"curriculum.grade_epochs": {"choice": [[4, 4], [2, 6]]}, "optimizer.lr": {"choice": [0.02, 0.05]}}
    raw.setdefault("asha", {"grace_period": 4, "reduction_factor": 2})
    return raw


@pytest.mark.parametrize("searcher,scheduler", [("random", "asha"), ("grid", "fifo"), ("optuna", "asha"),
                                                ("hyperopt", "asha"), ("bohb", "hyperband")])
def test_the_search_setup_ranks_trials_on_every_class(searcher, scheduler):
    """Every searcher x scheduler the project builds hands Tune SCHEDULE_METRIC (max) and leaves the
    scheduler and the searcher to take it from there: what they compare is validation accuracy over
    every class, as reported by each epoch (FORWARDED), never over the classes taught so far."""
    from raydistill.search.searchers import PACKAGES
    from raydistill.search.trainable import FORWARDED, SCHEDULE_METRIC
    import importlib.util
    if any(importlib.util.find_spec(p) is None for p in PACKAGES.get(searcher, ())):
        pytest.skip(f"{searcher} is not installed")
    assert SCHEDULE_METRIC == "val_acc_all_classes" and SCHEDULE_METRIC in FORWARDED
    config = wired_search(grades_space(searcher=searcher, scheduler=scheduler))
    assert (config.metric, config.mode) == (SCHEDULE_METRIC, "max")
    if scheduler != "fifo":
        assert (config.scheduler._metric, config.scheduler._mode) == (SCHEDULE_METRIC, "max")
        assert config.scheduler._time_attr == "epoch"
    if searcher in ("random", "grid"):
        assert config.search_alg is None
    else:
        assert (config.search_alg.searcher.metric, config.search_alg.searcher.mode) == (SCHEDULE_METRIC, "max")


def test_the_search_asha_compares_trials_in_different_grades_on_every_class():
    """The ASHA of the project's search setup, given its metric by Tune's path: at the epoch-4 rung
    one trial is in grade 1 (90% on its 2 of 4 classes = 45% of the task) and one in grade 2 (70%
    on all 4). The grade-2 trial is not stopped for scoring lower on more classes; a trial restored
    mid-run (first Tune iteration, reported epoch 4) is judged at the epoch-4 rung."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    asha = wired_search(grades_space()).scheduler
    trials = [Trial("__fake", stub=True) for _ in range(3)]
    for t in trials:
        asha.on_trial_add(None, t)
    common = {"epoch": 4, "training_iteration": 4, "epochs_planned": 8}
    assert asha.on_trial_result(None, trials[0], {**common, "grade": 1, "val_acc": 0.9,
                                                  "val_acc_all_classes": 0.45}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, trials[1], {**common, "grade": 2, "val_acc": 0.7,
                                                  "val_acc_all_classes": 0.7}) == TrialScheduler.CONTINUE
    restored = {**common, "training_iteration": 1, "grade": 2, "val_acc": 0.95, "val_acc_all_classes": 0.3}
    assert asha.on_trial_result(None, trials[2], restored) == TrialScheduler.STOP


def test_trial_rows_tell_an_asha_stop_from_an_interrupted_trial():
    from raydistill.search.results import trial_rows
    from raydistill.search.space import load_space
    space = load_space("smoke")
    candidates = space.candidates()[:3]
    results = [{"index": 0, "metrics": {"epoch": 1, "val_acc": 0.5}, "error": None, "done": True},
               {"index": 1, "metrics": {"epoch": 1, "val_acc": 0.5}, "error": None, "done": False}]
    rows = trial_rows(space, results, list(enumerate(candidates)), "asha")
    assert [r["stop_reason"] for r in rows] == ["stopped by asha after epoch 1", "interrupted after epoch 1",
                                                "not run"]


# ---- the smoke search (Ray) ------------------------------------------------------------------

@pytest.mark.slow   # Ray Tune search
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


@pytest.mark.slow   # Ray Tune search against the local S3 server
def test_a_search_writes_its_trials_and_best_to_an_s3_uri(ray_session, s3, tmp_path, monkeypatch):  # noqa: F811
    """`output: s3://…`: teachers, trials, the Tuner's state, trials.parquet and best.yaml all land in
    the bucket (the session's Ray instance was started without the S3 settings: the trials get them
    from the search); nothing is written to the local search path; re-running resumes from the
    bucket; the exported best runs from its URI."""
    import io
    import uuid
    import pandas as pd
    import raydistill
    from raydistill.cli import load_config, main
    from raydistill.search.teachers import training_events
    from raydistill.search.tuner import load_search
    from raydistill.storage import RunDir
    for key, value in s3.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAYDISTILL_CACHE_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.chdir(tmp_path)
    output = f"s3://{BUCKET}/tune-{uuid.uuid4().hex[:8]}"
    search = f"{output}/smoke"

    result = raydistill.tune("smoke", samples=2, output=output, progress=None)
    store = RunDir(search)
    assert result.search_dir == search and result.best_config == f"{search}/best.yaml"
    assert {"best.yaml", "space.json", "teachers", "trials", "trials.parquet", "tuner"} <= set(store.listdir())
    assert store.listdir("teachers") == ["group0.pt", "group1.pt", "trained.jsonl"]
    table = pd.read_parquet(io.BytesIO(store.read_bytes("trials.parquet")))
    assert list(table["trial"]) == ["trial-000", "trial-001"] and table["val_acc"].between(0, 1).all()
    assert {"trial-000", "trial-001"} <= set(store.listdir("trials"))
    assert store.listdir("tuner"), "the Tuner's state is in the bucket"
    assert not (tmp_path / "runs").exists(), "nothing of the search on the local disk"
    best = load_config(result.best_config)
    assert all(p.startswith(f"{search}/teachers/") for p in best.teachers.checkpoints.values())

    again = raydistill.tune("smoke", samples=2, output=output, progress=None)   # restored from the bucket
    assert len(training_events(search)) == 2
    assert again.table[["trial", "val_acc", "stop_reason"]].equals(table[["trial", "val_acc", "stop_reason"]])
    loaded = load_search(search)
    assert loaded.table.equals(table) and loaded.best_config == result.best_config
    assert loaded.best == result.best   # the whole row: searched lists decoded, grade an integer

    assert main(["run", "--config", result.best_config]) == 0
    summary = store.read_json("best/summary.json")
    assert summary["methods"]["ed"]["final_val_acc"] == pytest.approx(result.best["val_acc"], abs=1e-9)


@pytest.mark.slow   # trains teachers, builds a cache, runs a trial
def test_search_cache_is_built_once_and_trials_load_it(tmp_path):
    """`teachers.soft_labels: cache` in a search: the search builds one cache before the trials
    (shared_soft_labels), and a trial's run finds it under its own output.dir and only loads it."""
    from raydistill.pipeline.local import run
    from raydistill.search.teachers import prepare_search_teachers
    from raydistill.search.trainable import trial_experiment
    from raydistill.search.tuner import shared_soft_labels
    from raydistill.pipeline.prepare import prepare_data
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
    caches = [p for p in (search_dir / "trials" / "softlabels").iterdir() if not p.name.startswith(".")]
    assert len(caches) == 1   # beside it only the builders' lock file, .<key>.lock


# ---- searchers: Tune's own spaces, model-based searchers, points to evaluate, baselines ----------

def tiny_space(**extra) -> dict:
    """2 groups, resnet8 (3 blocks), 1+1 epochs of ed on tiny built-in data: one trial is seconds."""
    base = {"name": "searchers", "seed": 0,
            "data": {"source": "builtin", "num_classes": 4, "train_per_class": 60, "test_per_class": 30,
                     "ratio": "1:1", "val_fraction": 0.2},
            "teachers": {"arch": "resnet8", "epochs": 1, "batch_size": 32, "lr": 0.05},
            "student": {"arch": "resnet8"},
            "curriculum": {"grade_epochs": [1, 1], "head_widths": 16, "pass_mode": "mixed"},
            "optimizer": {"lr": 0.05, "batch_size": 32}}
    return {"base": base, "samples": 3, "max_concurrent": 2, "seed": 0, "search": {
        "curriculum.splits": {"valid_splits": True}, "curriculum.order": {"permutations": True},
        "optimizer.lr": {"loguniform": [0.01, 0.1]}, "curriculum.head_widths": {"randint": [8, 32]}}, **extra}


def test_compiled_spaces_sample_only_valid_splits_and_permutations():
    """Tune's domains (no Ray cluster): thousands of samples decode to valid increasing split tuples
    ending at the last block, permutations of the groups, values inside their ranges."""
    import random
    from ray.tune.search.sample import Categorical, Float, Integer
    from raydistill.search.searchers import decode, param_space
    from raydistill.search.space import space_from_dict
    raw = tiny_space()
    raw["base"]["data"].update(num_classes=6, ratio="1:1:1")
    raw["base"]["student"]["arch"] = "resnet20"     # 9 blocks: 28 valid split tuples for 3 grades
    raw["base"]["curriculum"]["grade_epochs"] = [1, 1, 1]
    space = space_from_dict(raw)
    domains = param_space(space.dimensions)
    assert isinstance(domains["curriculum.splits"], Categorical) and isinstance(domains["optimizer.lr"], Float)
    assert isinstance(domains["curriculum.head_widths"], Integer)
    random.seed(0)
    import numpy as np
    np.random.seed(0)
    seen_splits, seen_orders, widths = set(), set(), set()
    for _ in range(2000):
        values = decode(space.dimensions, {path: d.sample() for path, d in domains.items()})
        splits, order = values["curriculum.splits"], values["curriculum.order"]
        assert len(splits) == 3 and splits[-1] == 9 and all(a < b for a, b in zip(splits, splits[1:])), splits
        assert sorted(order) == [0, 1, 2], order
        assert 0.01 <= values["optimizer.lr"] <= 0.1 and 8 <= values["curriculum.head_widths"] <= 32
        space.experiment_for(values)   # the whole trial validates
        seen_splits.add(tuple(splits)), seen_orders.add(tuple(order)), widths.add(values["curriculum.head_widths"])
    assert len(seen_splits) == 28 and len(seen_orders) == 6 and widths == set(range(8, 33))


def test_points_to_evaluate_come_first_and_bad_points_or_searchers_fail_before_ray(tmp_path):
    from raydistill.search.space import SpaceError, space_from_dict
    point = {"curriculum.splits": [2, 3], "curriculum.order": [1, 0], "optimizer.lr": 0.05,
             "curriculum.head_widths": 16}
    for searcher in ("random", "optuna"):
        space = space_from_dict(tiny_space(searcher=searcher, points_to_evaluate=[point]))
        assert space.candidates()[0] == point
    grid = tiny_space(searcher="grid", points_to_evaluate=[{**point, "optimizer.lr": 0.05}])
    grid["search"]["optimizer.lr"] = {"choice": [0.02, 0.05]}
    grid["search"]["curriculum.head_widths"] = {"choice": [16]}
    candidates = space_from_dict(grid).candidates()
    assert candidates[0] == point and len(candidates) == 2 * 2 * 2 and len({json.dumps(c) for c in candidates}) == 8
    for change, pattern in (({"curriculum.splits": [3, 3]}, r"points_to_evaluate\[0\]\.curriculum\.splits: \[3, 3\] "
                                                            r"is outside the dimension"),
                            ({"optimizer.lr": 0.5}, r"points_to_evaluate\[0\]\.optimizer\.lr: 0\.5 is outside"),
                            ({"curriculum.order": None}, r"points_to_evaluate\[0\]\.curriculum\.order: None")):
        with pytest.raises(SpaceError, match=pattern):
            space_from_dict(tiny_space(searcher="optuna", points_to_evaluate=[{**point, **change}]))
    with pytest.raises(SpaceError, match=r"points_to_evaluate\[0\]: expected a value for each searched field"):
        space_from_dict(tiny_space(points_to_evaluate=[{"curriculum.splits": [2, 3]}]))
    with pytest.raises(SpaceError, match=r"searcher: expected one of \['random', 'grid', 'optuna', 'hyperopt', 'bohb'\]"):
        space_from_dict(tiny_space(searcher="tpe"))
    with pytest.raises(SpaceError, match=r"scheduler: searcher bohb runs with scheduler hyperband"):
        space_from_dict(tiny_space(searcher="bohb", scheduler="asha"))
    with pytest.raises(SpaceError, match=r"searcher: grid needs discrete dimensions .*optimizer\.lr is loguniform"):
        space_from_dict(tiny_space(searcher="grid")).candidates()
    # a model-based searcher proposes any combination: one invalid together is refused up front
    joint = tiny_space(searcher="optuna")
    joint["search"]["curriculum.splits"] = {"choice": [[1, 3], [2, 3]]}   # valid for resnet8 only
    joint["search"]["student.arch"] = {"choice": ["resnet8", "resnet14"]}
    with pytest.raises(SpaceError, match=r"searcher optuna may propose any combination, but .* is invalid"):
        space_from_dict(joint)


# bohb: HyperBandForBOHB with reduction factor 10 over 2-epoch trials is one bracket that never
# pauses a trial (see README "Searchers": a paused trial's Ray Train workers wait for Ray Train's
# placement-group cleaner, which needs the dashboard's State API; the test session has none)
SEARCHERS_RUN = [pytest.param("optuna", ["scratch", "kd", "multi_teacher"], {}, id="optuna+baselines"),
                 pytest.param("hyperopt", [], {}, id="hyperopt"),
                 pytest.param("bohb", [], {"asha": {"reduction_factor": 10}}, id="bohb")]


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory) -> dict:
    """The tiny space's teachers (group0, group1, all), trained once for every searcher's search."""
    from raydistill.search.space import space_from_dict
    from raydistill.search.teachers import prepare_search_teachers
    space = space_from_dict(tiny_space())
    return prepare_search_teachers(space.base, tmp_path_factory.mktemp("teachers"), lambda _m: None,
                                   methods=["ed", "scratch", "kd", "multi_teacher"])


@pytest.mark.slow   # Ray Tune search
@pytest.mark.parametrize("searcher,baselines,extra", SEARCHERS_RUN)
def test_model_based_searcher_runs_a_3_trial_search_end_to_end(ray_session, tmp_path, tiny_teachers, searcher,
                                                               baselines, extra):
    """3 trials proposed by Tune's searcher (the first the given point, exactly), trials.parquet and
    best.yaml as with random search; with baselines, the summary places the best curriculum."""
    import pandas as pd
    from raydistill import Experiment
    from raydistill.search import tune
    from raydistill.search.space import space_from_dict
    from raydistill.search.teachers import training_events
    point = {"curriculum.splits": [2, 3], "curriculum.order": [1, 0], "optimizer.lr": 0.0437,
             "curriculum.head_widths": 12}
    raw = tiny_space(name=searcher, searcher=searcher, points_to_evaluate=[point], baselines=baselines,
                     output=str(tmp_path), **extra)
    raw["base"]["teachers"]["checkpoints"] = tiny_teachers   # loaded, never trained here
    space = space_from_dict(raw)
    result = tune(space, progress=None)
    search_dir = tmp_path / searcher
    assert training_events(search_dir) == []
    table = pd.read_parquet(search_dir / "trials.parquet")
    assert list(table["trial"]) == ["trial-000", "trial-001", "trial-002"]
    assert set(table.columns) >= {"curriculum.splits", "curriculum.order", "optimizer.lr", "curriculum.head_widths",
                                  "val_acc", "test_acc", "epochs_run", "epochs_planned", "stop_reason", "wall_s"}
    first = table.iloc[0]
    assert (json.loads(first["curriculum.splits"]), json.loads(first["curriculum.order"]), first["optimizer.lr"],
            first["curriculum.head_widths"]) == ([2, 3], [1, 0], 0.0437, 12)
    ran = Experiment.from_yaml(search_dir / "trials" / "trial-000" / "config.yaml")   # the trial's own run
    assert (ran.splits(), ran.order(), ran.optimizer.lr, ran.curriculum.head_widths) == ([2, 3], [1, 0], 0.0437, 12)
    for _, row in table.iterrows():
        splits = json.loads(row["curriculum.splits"])
        assert splits in ([1, 3], [2, 3]) and sorted(json.loads(row["curriculum.order"])) == [0, 1]
        assert 0.01 <= row["optimizer.lr"] <= 0.1 and 8 <= row["curriculum.head_widths"] <= 32
    completed = table[table["stop_reason"] == "completed"]
    assert len(completed) >= 1 and completed["val_acc"].between(0, 1).all()
    assert result.best["trial"] == completed.sort_values("val_acc", ascending=False, kind="stable").iloc[0]["trial"]
    assert Experiment.from_yaml(result.best_config).methods == ["ed"]
    if baselines:
        assert set(result.baselines) == set(baselines)
        assert all(b["epochs"] == 2 and 0 <= b["test_acc"] <= 1 for b in result.baselines.values())
        summary = result.summary()
        for method in baselines:
            gap = 100 * (result.best["test_acc"] - result.baselines[method]["test_acc"])
            assert f"best - {method}: val" in summary and f"test {gap:+6.2f}" in summary, summary


def test_ablation_grid_and_its_table():
    """benchmarks/ablation.py: the shipped grid is every knob combination x 3 seeds (no Ray), and the
    table is mean ± std over seeds per combination, from trials.parquet-shaped rows."""
    import importlib.util
    import pandas as pd
    from raydistill.search import load_space
    spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    space = load_space("ablation_cifar10")
    combos = space.candidates()
    assert space.searcher == "grid" and space.scheduler == "fifo" and len(combos) == 48
    assert {(c["curriculum.pass_mode"], c["curriculum.bn_recalibrate"], c["optimizer.restart_per_grade"],
             json.dumps(c["curriculum.grade_epochs"]), c["seed"]) for c in combos} == {
        (p, b, r, g, s) for p in ("sequential", "mixed") for b in (False, True) for r in (False, True)
        for g in ("[2, 2, 4]", "[4, 2, 2]") for s in (0, 1, 2)}
    trials = pd.DataFrame([{"trial": f"trial-{i:03d}", "curriculum.pass_mode": '"mixed"', "seed": seed,
                            "val_acc": val, "test_acc": test, "stop_reason": "completed"}
                           for i, (seed, val, test) in enumerate([(0, 0.5, 0.40), (1, 0.6, 0.50), (2, 0.7, 0.60)])])
    [row] = ablation.aggregate(trials)
    assert row["test_acc"] == 50.0 and row["test_acc_std"] == 10.0 and row["val_acc"] == 60.0 and row["seeds"] == [0, 1, 2]
    assert "| mixed | 50.00 ± 10.00 | 60.00 ± 10.00 | 0,1,2 |" in ablation.markdown([row], "t")
