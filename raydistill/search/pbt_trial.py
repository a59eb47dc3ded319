"""A PBT trial's side: where it resumes after an exploit, what its Tune checkpoints hold, and the
schedule it follows.

An exploit (Tune hands the trial another trial's checkpoint, `tune.get_checkpoint()`) puts the
donor's progress where the trial's run resumes from: the run's checkpoint stores (`<run>/ray/`) are
replaced by one store (`ray/pbt`) holding the donor's `state.pt`, so the engine continues in the
donor's grade with its model, head, optimizer and plateau state, under the trial's new values. With
the grade budget mutated, the grades the donor completed keep their epochs and the current and later
ones split the rest by the new weights (`pbt.rebudget`). A trial restored from its own checkpoint
(a pause, a restart) resumes from its stores as any run does.

Every `perturbation_interval` epochs the trial reports its latest epoch checkpoint to Tune
(`state.pt`, and `schedule.json`: the schedule so far); Tune stores it under the search's storage,
a local path or a URI, where any node's trial can read it. The schedule (per epoch: grade, lr, alpha,
T, teacher mix; every exploit) is also written to `<run>/pbt_schedule.json` after every epoch.
"""
from __future__ import annotations

import io
import json
import tempfile
import zlib
from pathlib import Path
from typing import Optional

from raydistill.pipeline.checkpoints import STATE_FILE, save_progress
from raydistill.pipeline.graph import storage_name
from raydistill.search.pbt import GRADE_SHARES, rebudget
from raydistill.storage import RunDir, run_location

SCHEDULE_FILE = "pbt_schedule.json"      # in the trial's run directory
CHECKPOINT_SCHEDULE = "schedule.json"    # in each Tune checkpoint, beside state.pt
PLACED_STORE = "pbt"                      # <run>/ray/pbt: the donor's state an exploit resumes from


def model_checksum(state_dict: dict) -> int:
    """A CRC32 over every tensor's bytes, in key order: the same weights give the same number."""
    crc = 0
    for key in sorted(state_dict):
        crc = zlib.crc32(key.encode(), crc)
        crc = zlib.crc32(state_dict[key].detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


class PBTTrial:
    """One trial of a PBT search: `restore` once at start, then `reporter` as the run's on_report."""

    def __init__(self, exp, name: str, values: dict, interval: int):
        self.exp, self.name, self.values, self.interval = exp, name, values, interval
        self.out = RunDir(run_location(exp))
        self.method = exp.methods[0]
        self.schedule = {"trial": name, "epochs": [], "exploits": []}

    # ---- start ------------------------------------------------------------------------------
    def restore(self, checkpoint) -> Optional[dict]:
        """Continue from `checkpoint` (Tune's, or None). Returns the exploit record when it was
        another trial's."""
        if self.out.is_file(SCHEDULE_FILE):
            self.schedule = self.out.read_json(SCHEDULE_FILE)
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            meta = json.loads((Path(d) / CHECKPOINT_SCHEDULE).read_text())
            state_bytes = (Path(d) / STATE_FILE).read_bytes()
        if meta["trial"] == self.name:
            return None   # its own: the run's stores hold it (or a later epoch)
        import torch
        progress = torch.load(io.BytesIO(state_bytes), weights_only=True)
        state = progress["train_state"]
        shares = self.values.get(GRADE_SHARES)
        if isinstance(shares, dict) and state.get("grade_epochs"):
            state["grade_epochs"] = rebudget(list(state["grade_epochs"]), int(state["epoch"]),
                                             [float(shares[str(i)]) for i in range(len(shares))])
        stores = self.out.child("ray")
        for name in stores.listdir() if stores.exists() else []:
            stores.delete(name)
        save_progress(stores.child(PLACED_STORE), progress)
        self.out.delete("config.yaml")   # the run goes on under the donor's values, perturbed: a new config
        exploit = {"from": meta["trial"], "at_epoch": int(state["epoch"]), "grade": int(state["grade"]) + 1,
                   "grade_epochs": list(state["grade_epochs"] or []), "model_checksum": model_checksum(state["model"]),
                   "values": _plain(self.values)}
        self.schedule = {"trial": self.name, "epochs": [e for e in meta["epochs"] if e["epoch"] <= state["epoch"]],
                         "exploits": list(meta["exploits"]) + [exploit]}
        self.out.write_text(SCHEDULE_FILE, json.dumps(self.schedule, indent=1))
        print(f"pbt: {self.name} continues from {meta['trial']}'s checkpoint at epoch {state['epoch']} "
              f"(grade {state['grade'] + 1})", flush=True)
        return exploit

    # ---- every epoch ------------------------------------------------------------------------
    def record(self, metrics: dict) -> None:
        """The epoch's grade and the hyperparameters it trained with, in the schedule."""
        grade = int(metrics["grade"])
        c = self.exp.curriculum
        entry = {"epoch": int(metrics["epoch"]), "grade": grade, "lr": float(metrics["lr"]),
                 "base_lr": float(self.exp.optimizer.lr), "alpha": self.exp.grade_alphas()[grade - 1],
                 "temperature": float(c.temperature),
                 "all_teacher_weight": self.exp.all_teacher_weights()[grade - 1],
                 "val_acc": metrics.get("val_acc"), "val_acc_all_classes": metrics.get("val_acc_all_classes")}
        self.schedule["epochs"] = [e for e in self.schedule["epochs"] if e["epoch"] < entry["epoch"]] + [entry]
        self.out.write_text(SCHEDULE_FILE, json.dumps(self.schedule, indent=1))

    def checkpoint_dir(self, directory: str) -> None:
        """The latest epoch checkpoint of the method's stage and the schedule so far into `directory`."""
        store = self.out.child("ray").child(storage_name(f"method:{self.method}"))
        latest = max(n for n in store.listdir() if n.startswith("checkpoint_"))
        (Path(directory) / STATE_FILE).write_bytes(store.read_bytes(f"{latest}/{STATE_FILE}"))
        (Path(directory) / CHECKPOINT_SCHEDULE).write_text(json.dumps(self.schedule))

    def reporter(self, epochs_planned: int, forwarded):
        """The run's `on_report`: each ed epoch to Tune (`forwarded(report, epochs_planned)`: what
        Tune gets of it, None for other reports), with a checkpoint every `interval` epochs (Tune's
        PBT decides at those epochs, and can only copy a checkpoint reported there)."""
        from ray import tune
        from ray.tune import Checkpoint

        def report(metrics: dict) -> None:
            out = forwarded(metrics, epochs_planned)
            if out is None:
                return
            self.record(metrics)
            if out["epoch"] % self.interval or out["epoch"] >= epochs_planned:
                tune.report(out)
                return
            with tempfile.TemporaryDirectory() as d:
                self.checkpoint_dir(d)
                tune.report(out, checkpoint=Checkpoint.from_directory(d))   # persisted before it returns
        return report


def _plain(values: dict) -> dict:
    return json.loads(json.dumps(values))
