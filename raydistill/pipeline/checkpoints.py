"""A stage's progress as checkpoints in storage: what every executor writes after each epoch and
reads to resume (`state.pt` under `checkpoint_*` folders), so a run resumes under any executor."""
from __future__ import annotations

from typing import Optional

from raydistill.storage import RunDir


STATE_FILE = "state.pt"


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
    try:
        return directory.load_torch(name, weights_only=True)
    except Exception:   # a partial copy of a checkpoint whose worker died mid-upload
        return None


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
