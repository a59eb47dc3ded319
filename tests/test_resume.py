"""Resuming across executors and stores (issue 32): the most advanced checkpoint wins whichever store
holds it, `--local` checkpoints and resumes like the Ray executors (and pins torch threads like them),
a checkpoint that cannot be read stops the resume instead of counting as none, a resumed run lists
its teachers in run order, and a fresh stage's worker does not claim to resume.

The Ray executors' worker loop runs here in this process (`worker.run_here` with the packed data,
the body of a one-worker Ray task), without Ray; an interruption is an exception raised from the
per-epoch report, right after that epoch's checkpoint is stored."""
from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch

from conftest import tiny_experiment

QUICK = {"teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,2]", "data.train_per_class": 30,
         "data.test_per_class": 10}


class Interrupt(Exception):
    """Stands for a killed worker or a Ctrl-C: raised after an epoch's checkpoint is stored."""


def _stop_at(stage: str, epoch: int):
    def on_report(metrics: dict) -> None:
        if metrics.get("stage") == stage and metrics.get("epoch") == epoch:
            raise Interrupt(f"{stage} epoch {epoch}")
    return on_report


def _worker(exp, store: str, stages, packed, on_report=None, ready=()):
    """The stages `stages` (None: all) of `exp`'s run as one Ray task's worker would run them, with
    checkpoint store `<run>/ray/<store>`; `ready`: the completed teachers a stage needs."""
    from raydistill.distributed.executors import stage_config
    from raydistill.distributed.worker import run_here
    from raydistill.storage import RunDir, run_location
    config = stage_config(exp, RunDir(run_location(exp)), None, store, stages, ready)
    return run_here(config, packed, on_report=on_report)


def _started(exp):
    """The run directory and packed data, as the Ray driver prepares them (`start_run`, `pack_data`)."""
    from raydistill.distributed.data_transfer import pack_data
    from raydistill.pipeline.prepare import start_run, with_absolute_paths
    exp = with_absolute_paths(exp)
    data, out = start_run(exp)
    return exp, out, pack_data(data)


def _epochs(run_dir, stage: str) -> list:
    files = [run_dir / "epochs.jsonl", *sorted((run_dir / "epochs").glob("*.jsonl"))]
    return [e["epoch"] for f in files if f.is_file() for e in map(json.loads, f.read_text().splitlines())
            if e["stage"] == stage]


# ---- item 4: the most advanced checkpoint of a stage wins, whichever store holds it -----------------

@pytest.mark.slow   # trains tiny stages, several times
def test_a_resume_starts_from_the_most_advanced_epoch_in_any_store(tmp_path, capsys):
    """`method:scratch` reaches epoch 2 in the one-fit store `train`, then epoch 3 in its own stage
    store (ray.stages auto switched executors); the one-fit worker again must continue at epoch 3,
    not at its own store's epoch 2 (which would train epoch 3 twice)."""
    exp, out, packed = _started(tiny_experiment(tmp_path, methods="[scratch]", **QUICK))
    with pytest.raises(Interrupt):
        _worker(exp, "train", None, packed, _stop_at("method:scratch", 2))
    with pytest.raises(Interrupt):
        _worker(exp, "stage-method-scratch", ["method:scratch"], packed, _stop_at("method:scratch", 3))
    capsys.readouterr()
    final = _worker(exp, "train", None, packed)
    said = capsys.readouterr().out
    assert "resuming method:scratch at epoch 3" in said
    assert _trained_epochs(said.splitlines(), "scratch") == [4], "an epoch was trained twice"
    history = final["completed"]["method:scratch"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


# ---- item 14: a fresh stage's worker does not say it resumes ----------------------------------------

@pytest.mark.slow   # trains tiny stages, several times
def test_a_fresh_stage_after_earlier_stages_does_not_say_resuming(tmp_path, capsys):
    exp, out, packed = _started(tiny_experiment(tmp_path, methods="[kd]", **QUICK))
    _worker(exp, "stage-teacher-all", ["teacher:all"], packed)
    capsys.readouterr()
    _worker(exp, "stage-method-kd", ["method:kd"], packed, ready=["teacher:all"])
    said = capsys.readouterr().out
    assert "1 earlier stage(s) done" in said and "resuming" not in said, said


# ---- item 12: teachers in run order, whatever the stores' names ----------------------------------------

@pytest.mark.slow   # trains tiny stages, several times
def test_a_resumed_run_lists_teachers_in_run_order(tmp_path):
    """`teacher:all` completed in its stage store (`stage-teacher-all` lists before the others), the
    rest in the one-fit store: metrics.json and the result list the teachers as a fresh run does."""
    from raydistill.pipeline.checkpoints import run_progress
    from raydistill.pipeline.results import result_from_progress
    exp, out, packed = _started(tiny_experiment(tmp_path, methods="[kd,ed]", **{
        **QUICK, "curriculum.grade_epochs": "[1,1,1]"}))
    _worker(exp, "stage-teacher-all", ["teacher:all"], packed)
    _worker(exp, "train", None, packed)
    order = ["group0", "group1", "group2", "all"]
    assert list(json.loads((tmp_path / "tiny" / "metrics.json").read_text())["teachers"]) == order
    assert list(result_from_progress(exp, out, run_progress(out)[0]).teachers) == order


# ---- item 11: only a missing or truncated checkpoint counts as none ------------------------------------

def _state_bytes(epoch: int, seq: int) -> bytes:
    from raydistill.pipeline.checkpoints import empty_progress
    buffer = io.BytesIO()
    torch.save({**empty_progress(), "seq": seq, "stage": "method:ed",
                "train_state": {"epoch": epoch}}, buffer)
    return buffer.getvalue()


def test_only_a_missing_or_truncated_checkpoint_counts_as_none(tmp_path):
    """Missing (a folder whose state.pt is not there yet) and truncated (a copy cut off mid-upload:
    no zip directory at its end) mean "no checkpoint here"; a checkpoint that exists but cannot be
    read (here a directory where the file should be: the read fails as a throttled S3 GET does) or
    that is complete but does not load (corrupt) stops with an error naming it, since resuming
    without it would retrain its stages and overwrite their files."""
    from raydistill.pipeline.checkpoints import CheckpointReadError, latest_progress, run_progress
    from raydistill.storage import RunDir
    store = tmp_path / "run" / "ray" / "train"
    (store / "checkpoint_task-000000001").mkdir(parents=True)
    (store / "checkpoint_task-000000001" / "state.pt").write_bytes(_state_bytes(1, 1))
    (store / "checkpoint_task-000000002").mkdir()                                   # missing
    (store / "checkpoint_task-000000003").mkdir()
    (store / "checkpoint_task-000000003" / "state.pt").write_bytes(_state_bytes(3, 3)[:-100])   # truncated
    (store / "checkpoint_task-000000004").mkdir()
    (store / "checkpoint_task-000000004" / "state.pt").write_bytes(b"")           # empty: truncated at 0
    (store / "checkpoint_manager_snapshot.json").write_text("{}")   # Ray Train's own file: not a checkpoint
    assert latest_progress(None, RunDir(store))["train_state"] == {"epoch": 1}

    (store / "checkpoint_task-000000005" / "state.pt").mkdir(parents=True)        # unreadable
    with pytest.raises(CheckpointReadError, match=r"checkpoint_task-000000005/state.pt: cannot read") as caught:
        run_progress(RunDir(tmp_path / "run"))
    assert "checkpoint_task-000000005 to resume from the checkpoint before it" in str(caught.value)

    (store / "checkpoint_task-000000005" / "state.pt").rmdir()
    corrupt = io.BytesIO()
    with zipfile.ZipFile(corrupt, "w") as z:   # a whole zip, but not a torch checkpoint
        z.writestr("state/data.pkl", b"not a pickle")
    (store / "checkpoint_task-000000005" / "state.pt").write_bytes(corrupt.getvalue())
    with pytest.raises(CheckpointReadError, match="checkpoint_task-000000005/state.pt"):
        latest_progress(None, RunDir(store))


# ---- items 5 and 9: the in-process executor checkpoints, resumes, and pins threads as Ray workers do ---

def _interrupting(method: str, epoch: int, lines: list):
    """A progress callback that records the lines and stops the run (as Ctrl-C does) when `method`
    starts logging `epoch`: epoch - 1 is the last one checkpointed."""
    def progress(line: str) -> None:
        lines.append(line)
        words = line.split()
        if words[:1] == [method] and "epoch" in words and words[words.index("epoch") + 1] == f"{epoch}/4":
            raise KeyboardInterrupt
    return progress


def _teacher_files(run_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "teachers").glob("*.pt"))}


def _trained_epochs(lines: list, method: str) -> list:
    return [int(line.split("epoch")[1].split("/")[0]) for line in lines if line.split()[:1] == [method]
            and " epoch " in line]


@pytest.mark.slow   # trains tiny stages, several times
def test_a_killed_local_run_resumes_without_retraining(tmp_path):
    from raydistill.pipeline.local import run
    exp = tiny_experiment(tmp_path, methods="[ed]", **QUICK)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run(exp, progress=_interrupting("ed", 3, lines))
    run_dir = tmp_path / "tiny"
    teachers = _teacher_files(run_dir)
    assert sorted(teachers) == ["group0.pt", "group1.pt", "group2.pt"]
    lines = []
    result = run(exp, progress=lines.append)
    assert not [line for line in lines if line.startswith("training teacher")], lines
    assert "resuming: 3 stage(s) done, method:ed at epoch 2" in lines
    assert _trained_epochs(lines, "ed") == [3, 4]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert _teacher_files(run_dir) == teachers   # not retrained, not rewritten
    assert list(result.teachers) == ["group0", "group1", "group2"]
    assert json.loads((run_dir / "summary.json").read_text())["methods"]["ed"]["epochs"] == 4


@pytest.mark.slow   # trains tiny stages, several times
def test_local_over_an_interrupted_ray_run_resumes_it(tmp_path):
    """The Ray worker loop (a task's body) stopped after ed's epoch 2; `--local` on the same run
    directory trains neither the teachers again nor ed's first two epochs."""
    from raydistill.pipeline.local import run
    exp, out, packed = _started(tiny_experiment(tmp_path, methods="[ed]", **QUICK))
    with pytest.raises(Interrupt):
        _worker(exp, "train", None, packed, _stop_at("method:ed", 2))
    run_dir = tmp_path / "tiny"
    teachers = _teacher_files(run_dir)
    lines = []
    result = run(exp, progress=lines.append)
    assert not [line for line in lines if line.startswith("training teacher")], lines
    assert _trained_epochs(lines, "ed") == [3, 4]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert _teacher_files(run_dir) == teachers


@pytest.mark.slow   # trains tiny stages, several times
def test_local_run_trains_with_a_ray_workers_threads(tmp_path):
    """1 and 2 torch threads give different sums (conv + BN backward), so `--local` trains with the
    threads a Ray worker of the same experiment gets, and gives the caller's setting back after."""
    from raydistill.pipeline.local import run
    exp = tiny_experiment(tmp_path, methods="[scratch]", **{**QUICK, "ray.cpus_per_worker": 2})
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(exp, progress=lambda line: seen.append(torch.get_num_threads()) if " epoch " in line else None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {2}, seen
