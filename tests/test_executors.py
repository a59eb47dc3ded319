"""The stage graph on every executor (issue 28): in this process, a Ray task per one-worker stage,
a Ray Train fit per stage, one fit for the whole graph; same seed, same numbers; a one-worker stage
starts no TorchTrainer; a run interrupted under one executor resumes under another."""
import json
import os

import pytest

from conftest import tiny_experiment

pytestmark = pytest.mark.slow

# two groups and ED alone: the fewest stages with a teacher -> method dependency (two teachers, one
# method), as the per-stage executor pays a Ray Train start-up for each (132 -> 79 s for the four
# executors with three groups and scratch beside ED); 30 images per class (not 150): a fifth of the
# training, and the numbers still tell seeds apart (seeds 0, 1, 2: three different sets)
QUICK = {"teachers.epochs": 1, "data.ratio": "1:1", "curriculum.splits": "[2,3]", "curriculum.grade_epochs": "[1,1]",
         "methods": "[ed]", "data.train_per_class": 30, "data.test_per_class": 30}


def _epochs(run_dir) -> list:
    """Every trained epoch of every stage, from the run's epoch logs (one file, or one per stage)."""
    files = [run_dir / "epochs.jsonl", *sorted((run_dir / "epochs").glob("*.jsonl"))]
    return [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines()]


def _numbers(result) -> dict:
    return {**{f"teacher:{k}": v["test_acc"] for k, v in result.teachers.items()},
            **{m: (s["final_test_acc"], s["final_val_acc"]) for m, s in result.methods.items()}}


@pytest.fixture(scope="module")
def executor_runs(ray_session, tmp_path_factory):
    """The same tiny run on every executor, once for the module: {name: (result, run dir, driver lines)}."""
    from raydistill.distributed.trainer import run_distributed
    from raydistill.pipeline.local import run
    import torch
    root = tmp_path_factory.mktemp("executors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # not what a Ray worker gets on 2+ cores: the in-process executor pins its own
    try:
        runs = {"in_process": (run(tiny_experiment(root / "in_process", **QUICK), progress=None), [])}
    finally:
        torch.set_num_threads(threads)
    for name, overrides in {"task": {}, "fit_per_stage": {"ray.stages": "concurrent", "ray.executor": "fit"},
                            "one_fit": {"ray.executor": "fit"}}.items():
        lines = []
        runs[name] = (run_distributed(tiny_experiment(root / name, **QUICK, **overrides), progress=lines.append), lines)
    return {name: (result, root / name / "tiny", lines) for name, (result, lines) in runs.items()}


def test_same_seed_same_accuracies_on_every_executor(executor_runs):
    expected = _numbers(executor_runs["in_process"][0])
    assert set(expected) == {"teacher:group0", "teacher:group1", "ed"}
    for name, (result, _, _) in executor_runs.items():
        assert _numbers(result) == expected, name
    stores = {name: sorted(p.name for p in (run_dir / "ray").iterdir())
              for name, (_, run_dir, _) in executor_runs.items() if name != "in_process"}
    assert stores["one_fit"] == ["train"]
    assert stores["task"] == stores["fit_per_stage"] == ["stage-method-ed", "stage-teacher-group0",
                                                         "stage-teacher-group1"]


def test_a_one_worker_stage_starts_no_torch_trainer(executor_runs):
    """What ran, from what it left: a TorchTrainer's storage holds Ray Train's own files and
    `checkpoint_<time>` folders; a task's store holds only `checkpoint_task-<seq>` folders, and the
    driver said which executor it chose."""
    _, task_dir, lines = executor_runs["task"]
    assert any("task per one-worker stage" in line for line in lines), lines
    for store in (task_dir / "ray").iterdir():
        names = sorted(p.name for p in store.iterdir())
        assert names and all(n.startswith("checkpoint_task-") for n in names), (store.name, names)
    # a fit, for contrast: Ray Train's files are there
    names = {p.name for p in (executor_runs["one_fit"][1] / "ray" / "train").iterdir()}
    assert any(not n.startswith("checkpoint_task-") for n in names), names


def test_run_interrupted_under_one_fit_resumes_as_tasks_without_redoing_epochs(ray_session, tmp_path):
    from raydistill.distributed.trainer import RunInterrupted, run_distributed
    # which epochs ran is all it checks: a few images per class, every epoch a few batches
    overrides = {"teachers.epochs": 2, "curriculum.grade_epochs": "[1,1,2]", "data.train_per_class": 20,
                 "data.test_per_class": 10}
    with pytest.raises(RunInterrupted):
        run_distributed(tiny_experiment(tmp_path, **overrides, **{"ray.executor": "fit"}), progress=None,
                        fail_once_at=("method:ed", 2))
    run_dir = tmp_path / "tiny"
    assert [e["epoch"] for e in _epochs(run_dir) if e["stage"] == "method:ed"] == [1, 2]
    # resumed as one-worker tasks; a second kill (epoch 3) is recovered by the task's own restart
    result = run_distributed(tiny_experiment(tmp_path, **overrides, **{"ray.max_failures": 1}), progress=None,
                             fail_once_at=("method:ed", 3))
    pairs = [(e["stage"], e["epoch"]) for e in _epochs(run_dir)]
    assert len(pairs) == len(set(pairs)), f"an epoch was trained twice: {pairs}"
    assert [e for s, e in pairs if s == "method:ed"] == [1, 2, 3, 4]
    assert sorted(e for s, e in pairs if s.startswith("teacher:")) == [1, 1, 1, 2, 2, 2]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert set(result.teachers) == {"group0", "group1", "group2"}
    assert os.path.isdir(run_dir / "ray" / "train") and os.path.isdir(run_dir / "ray" / "stage-method-ed")
