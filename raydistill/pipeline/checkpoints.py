"""A stage's progress as checkpoints in storage: what every executor writes after each epoch and
reads to resume (`state.pt` under `checkpoint_*` folders), so a run resumes under any executor."""
from __future__ import annotations

import io
import zipfile
from typing import Optional

from raydistill.storage import RunDir, join


STATE_FILE = "state.pt"
TASK_PREFIX = "checkpoint_task-"   # the checkpoints a store written by a task or this process holds
TASK_CHECKPOINTS_KEPT = 2


class CheckpointReadError(OSError):
    """A checkpoint exists but cannot be read (a storage error such as S3 throttling, a directory
    where the file should be, a complete file that does not load). Resuming without it would
    retrain stages it holds and overwrite their files, so the run stops and names it."""


def empty_progress() -> dict:
    """`aborted`: the error of a non-finite loss that stopped the run (the checkpoint then repeats
    the last good state, so the stop reaches the driver through storage, not a side file)."""
    return {"seq": 0, "stage": None, "train_state": None, "elapsed": 0.0, "completed": {}, "aborted": None}


def latest_progress(checkpoint, storage: RunDir) -> dict:
    """The most advanced state among Ray Train's latest checkpoint and every checkpoint directory
    in the storage folder. A checkpoint is persisted (SYNC upload) before `report` returns, but
    Ray registers it a moment later; a worker killed in between would otherwise redo that epoch."""
    best = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            best = _load_state(RunDir(d), STATE_FILE)
    for name in storage.listdir():
        if name.startswith("checkpoint_"):
            state = _load_state(storage, f"{name}/{STATE_FILE}")
            if state is not None and (best is None or state["seq"] > best["seq"]):
                best = state
    return {**empty_progress(), **(best or {})}


def _load_state(directory: RunDir, name: str) -> Optional[dict]:
    """The state in `name`; None only when there is none yet: the file is missing, or truncated (a
    copy cut off when its worker died mid-upload: torch writes a zip, whose directory is at its end,
    so a cut-off copy has none). Any other failure raises CheckpointReadError."""
    import torch
    try:
        data = directory.read_bytes(name)
    except (FileNotFoundError, NotADirectoryError):   # the latter: a file named checkpoint_* (Ray Train's
        return None                                   # checkpoint_manager_snapshot.json), no folder
    except Exception as err:
        raise _unreadable(directory, name, err) from err
    try:
        zipfile.ZipFile(io.BytesIO(data)).close()
    except zipfile.BadZipFile:
        return None   # truncated (or empty): no zip directory at its end
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:
        raise _unreadable(directory, name, err) from err


def _unreadable(directory: RunDir, name: str, err: Exception) -> CheckpointReadError:
    folder = join(directory.location, name.rsplit("/", 1)[0]) if "/" in name else directory.location
    return CheckpointReadError(f"{join(directory.location, name)}: cannot read this checkpoint "
                               f"({type(err).__name__}: {err}); re-run once the storage answers, or delete "
                               f"{folder} to resume from the checkpoint before it")


def save_progress(store: RunDir, progress: dict) -> None:
    """`progress` as the store's checkpoint `checkpoint_task-<seq>/state.pt`, the last two kept: what
    an executor that is not a Ray Train fit (a Ray task, this process) writes after each epoch."""
    import torch
    buffer = io.BytesIO()
    torch.save(progress, buffer)
    store.write_bytes(f"{TASK_PREFIX}{progress['seq']:09d}/{STATE_FILE}", buffer.getvalue())
    mine = sorted(n for n in store.listdir() if n.startswith(TASK_PREFIX))
    for old in mine[:-TASK_CHECKPOINTS_KEPT]:
        store.delete(old)


def stores(out: RunDir) -> list:
    """The checkpoint stores of a run (`<run>/ray/<name>`): one per fit or per stage, whichever
    executor wrote it."""
    root = out.child("ray")
    return [root.child(name) for name in root.listdir()] if root.exists() else []


def run_progress(out: RunDir) -> tuple:
    """({stage: record} completed in any store, {stage: (train_state, elapsed)} of the most advanced
    epoch checkpoint of every stage begun but not completed): what a worker resumes from, whichever
    executor ran the stages before."""
    progresses = [latest_progress(None, store) for store in stores(out)]
    completed = {}
    for p in progresses:
        completed.update(p["completed"])
    partial = {}
    for p in progresses:
        stage, state = p["stage"], p["train_state"]
        if stage and state is not None and stage not in completed:
            if stage not in partial or state["epoch"] > partial[stage][0]["epoch"]:
                partial[stage] = (state, p["elapsed"])
    return completed, partial


def resume_point(own: dict, out: RunDir) -> tuple:
    """(completed, partial) as `run_progress`, with `own` (this executor's latest progress, which may
    come from Ray Train's restored checkpoint, not yet listed in its store) as one more store: the
    most advanced epoch of each stage wins, whichever store holds it, so no epoch trains twice."""
    completed, partial = run_progress(out)
    completed = {**completed, **own["completed"]}
    partial = {s: p for s, p in partial.items() if s not in completed}
    stage, state = own["stage"], own["train_state"]
    if stage and state is not None and stage not in completed:
        if stage not in partial or state["epoch"] > partial[stage][0]["epoch"]:
            partial[stage] = (state, own["elapsed"])
    return completed, partial
