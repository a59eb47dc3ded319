"""The search's results: one row per trial (Parquet), the best N printed, the best exported as YAML.

The best trial is chosen on the last epoch's VALIDATION accuracy among trials that ran their whole
curriculum (an early-stopped trial's last val_acc is on fewer classes and not comparable); test
accuracy is only reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from raydistill.search.space import SearchSpace
from raydistill.search.trainable import trial_experiment, trial_name
from raydistill.storage import RunDir, absolute, join
from raydistill.storage import located as storage_location

TABLE_FILE = "trials.parquet"
BEST_FILE = "best.yaml"
COMPLETED = "completed"
# the columns of a trial's row besides its searched values (see trial_rows)
ROW_FIELDS = ("trial", "val_acc", "test_acc", "grade", "epochs_run", "epochs_planned", "stop_reason", "wall_s")
INTEGER_FIELDS = ("grade", "epochs_run", "epochs_planned")   # a column with a missing value reads back as floats


def trial_rows(space: SearchSpace, results, trials: list, scheduler: str) -> list:
    """One dict per trial ((index, values) in `trials`) from Tune results: (trial index, metrics of
    the last report, error)."""
    by_index = {}
    for r in results:
        by_index[r["index"]] = r
    rows = []
    for index, values in trials:
        r = by_index.get(index, {})
        metrics = r.get("metrics") or {}
        planned = space.experiment_for(values).total_epochs()
        run = int(metrics.get("epoch", 0) or 0)
        if r.get("error"):
            reason = f"error: {str(r['error']).strip().splitlines()[-1][:120]}"
        elif run >= planned:
            reason = COMPLETED
        elif run == 0:
            reason = "not run"
        elif r.get("done") and scheduler in ("asha", "hyperband"):
            reason = f"stopped by {scheduler} after epoch {run}"
        else:
            reason = f"interrupted after epoch {run}"
        row = {"trial": trial_name(index)}
        row.update({path: values[path] for path in values})
        row.update({"val_acc": metrics.get("val_acc"), "test_acc": metrics.get("test_acc"),
                    "grade": metrics.get("grade"), "epochs_run": run, "epochs_planned": planned,
                    "stop_reason": reason, "wall_s": round(float(metrics.get("time_total_s", 0.0) or 0.0), 1)})
        rows.append(row)
    return rows


def table_frame(rows: list, dimensions: list):
    """A DataFrame; searched list values become their YAML flow text (Parquet wants one type)."""
    import pandas as pd
    frame = pd.DataFrame(rows)
    for d in dimensions:
        column = frame[d.path]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
            frame[d.path] = [json.dumps(v) for v in column]
    return frame


def table_rows(frame) -> list:
    """The rows of `trial_rows` read back from a table (trials.parquet): missing values None, searched
    values that `table_frame` wrote as JSON text decoded, integer fields integers again; so a loaded
    search's best equals the best `tune` returned."""
    rows = []
    for record in frame.to_dict("records"):
        row = {}
        for key, value in record.items():
            if isinstance(value, float) and value != value:
                value = None
            elif key not in ROW_FIELDS and isinstance(value, str):
                value = json.loads(value)
            elif key in INTEGER_FIELDS:
                value = int(value)
            row[key] = value
        rows.append(row)
    return rows


def write_table(frame, search_dir) -> Union[Path, str]:
    """<search dir>/trials.parquet, written whole (a local path or a URI); returns where."""
    import io
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    RunDir(search_dir).write_bytes(TABLE_FILE, buffer.getvalue())
    return located(search_dir, TABLE_FILE)


def located(search_dir, name: str) -> Union[Path, str]:
    """`name` in the search directory: a Path for a local one, a URI (str) otherwise."""
    return storage_location(join(str(search_dir), name))


def best_row(rows: list):
    """The completed trial with the highest last-epoch validation accuracy (ties: lowest trial)."""
    done = [r for r in rows if r["stop_reason"] == COMPLETED and r["val_acc"] is not None]
    return max(done, key=lambda r: r["val_acc"]) if done else None


def format_best(frame, top: int) -> str:
    """The best `top` completed trials by validation accuracy, then the rest, as text."""
    shown = frame.assign(_done=frame["stop_reason"] == COMPLETED)
    shown = shown.sort_values(["_done", "val_acc"], ascending=[False, False], kind="stable").drop(columns="_done")
    shown = shown.head(top)
    for col in ("val_acc", "test_acc"):
        shown[col] = [("   n/a" if v is None or v != v else f"{100 * v:6.2f}") for v in shown[col]]
    return shown.drop(columns=["wall_s"]).to_string(index=False)


def export_best(space: SearchSpace, row: dict, values: dict, teachers: dict, search_dir,
                cpus_per_worker: float) -> Union[Path, str]:
    """<search dir>/best.yaml: the best trial's complete experiment; `raydistill run --config` runs it
    into <search dir>/best with the search's teachers."""
    index = int(row["trial"].split("-")[1])
    exp = trial_experiment(space.base.to_dict(), values, teachers, absolute(str(search_dir)), index,
                           cpus_per_worker)
    exp = exp.with_overrides([f"name={space.name}-best", "output.name=best"])
    path = located(search_dir, BEST_FILE)
    header = (f"# Best trial of search {space.name!r} ({space.source}): {row['trial']}, chosen on validation "
              f"accuracy {row['val_acc']:.4f}\n# (test accuracy {row['test_acc']:.4f}, reported only). "
              f"Reproduce: raydistill run --config {path}\n")
    RunDir(search_dir).write_text(BEST_FILE, header + exp.to_yaml())
    return path


@dataclass
class SearchResult:
    """What `tune` returns: the search directory, every trial's row, the best trial (chosen on
    validation accuracy) and its exported experiment, and the baselines run beside the search."""
    search_dir: Union[Path, str]   # a local directory, or a URI (str)
    table: object                  # pandas DataFrame, one row per trial (also trials.parquet)
    best: Optional[dict]           # the best trial's row (chosen on val_acc), None if none completed
    best_config: Optional[Union[Path, str]]    # best.yaml (a URI for a search stored behind one)
    baselines: dict = field(default_factory=dict)   # method -> {val_acc, test_acc, epochs}
    baseline_error: Optional[str] = None   # one line when the baselines' run failed (the search stands)

    def summary(self, top: int = 5) -> str:
        from raydistill.search.baselines import comparison
        text = format_best(self.table, top)
        return text + ("\n" + comparison(self.best, self.baselines) if self.baselines else "")
