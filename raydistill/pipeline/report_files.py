"""Report files of a finished run, and reading a run directory back.

`write_report_files(run_dir, history, summary)` writes, next to metrics.json / summary.json:

* ``metrics.parquet`` – one row per epoch per method (every key of the per-epoch metrics dicts is a
  column, missing keys are null), teacher epochs included when the history has them;
* ``curves.png`` – val and test accuracy per epoch of the student methods, with the grade switches
  of ``ed`` marked;
* ``tensorboard/<method>/`` – TensorBoard event files (accuracy/*, loss/*, lr, images_per_s per epoch).

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written parquet, png or event directory behind. `load_run` and `report_text` read a run
directory back; `report_text` reprints exactly the table the run printed.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from raydistill.pipeline.summary import format_table
from raydistill.storage import RunDir, is_uri

STUDENT_METHODS = ("ed", "scratch", "kd", "multi_teacher")

# Columns the parquet always has (in this order, whatever the history holds), with their types.
INT_COLUMNS = ("grade", "epoch", "num_classes", "blocks", "train_images")
FLOAT_COLUMNS = ("lr", "loss", "ce", "kd", "train_acc", "val_acc", "val_acc_all_classes", "test_acc", "images_per_s",
                 "seconds")
COLUMNS = ("method", "grade", "epoch", "lr", "num_classes", "blocks", "loss", "ce", "kd", "train_acc",
           "train_images", "seconds", "images_per_s", "val_acc", "val_acc_all_classes", "test_acc")

# TensorBoard tag -> metrics key.
SCALARS = {"accuracy/train": "train_acc", "accuracy/val": "val_acc", "accuracy/test": "test_acc",
           "loss/total": "loss", "loss/ce": "ce", "loss/kd": "kd", "lr": "lr", "images_per_s": "images_per_s",
           "grade": "grade", "num_classes": "num_classes"}


class RunDirError(ValueError):
    """A directory that is not a finished run (or whose files are unreadable); names the file."""


# ---- writing ----------------------------------------------------------------------------------

def write_report_files(run_dir: Path, history: list, summary: dict) -> dict:
    """Write metrics.parquet, curves.png and tensorboard/<method>/ under run_dir.
    Returns {"parquet": path, "curves": path, "tensorboard": dir}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    history = list(history or [])
    return {"parquet": write_parquet(run_dir / "metrics.parquet", history),
            "curves": write_curves(run_dir / "curves.png", history, summary),
            "tensorboard": write_tensorboard(run_dir / "tensorboard", history)}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _column_names(history: list) -> list:
    names = list(COLUMNS)
    seen = set(names)
    for row in history:
        for k in row:
            if k not in seen:
                seen.add(k)
                names.append(k)
    return names


def _cell(v):
    """Scalars as they are; anything nested (lists, dicts) as JSON text."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=float)
    return v


def history_table(history: list):
    """The history as a pyarrow Table: one row per entry, one column per key (null where missing)."""
    import pyarrow as pa
    columns = {}
    for name in _column_names(history):
        values = [_cell(row.get(name)) for row in history]
        if name == "method":
            kind = pa.string()
        elif name in INT_COLUMNS:
            kind = pa.int64()
        elif name in FLOAT_COLUMNS:
            kind = pa.float64()
        else:
            kind = None
        try:
            columns[name] = pa.array(values, type=kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            try:  # e.g. a float in an int column: let pyarrow infer
                columns[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                columns[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(columns)


def write_parquet(path: Path, history: list) -> Path:
    import pyarrow.parquet as pq
    path = Path(path)
    tmp = _tmp(path)
    try:
        pq.write_table(history_table(history), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _by_method(history: Iterable[dict], methods=None) -> dict:
    """{method: rows sorted by epoch, last entry kept per epoch} in order of first appearance."""
    out: dict = {}
    for row in history:
        m = row.get("method")
        if m is None or (methods is not None and m not in methods) or row.get("epoch") is None:
            continue
        out.setdefault(m, {})[row["epoch"]] = row
    return {m: [rows[e] for e in sorted(rows)] for m, rows in out.items()}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_curves(path: Path, history: list, summary: dict | None = None) -> Path:
    """Val (dashed) and test (solid) accuracy per epoch of each student method; ed's grade switches
    as labelled vertical dashed lines. Drawn with the Agg canvas directly (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(9, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    runs = {m: rows for m, rows in _by_method(history).items() if m.split("+")[0] in STUDENT_METHODS}
    colors = {m: f"C{i}" for i, m in enumerate(runs)}
    for method, rows in runs.items():
        epochs = [r["epoch"] for r in rows]
        for key, style, label in (("test_acc", "-", "test"), ("val_acc", "--", "val")):
            pts = [(e, 100 * r[key]) for e, r in zip(epochs, rows) if _finite(r.get(key))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[method], marker="o",
                        markersize=3, linewidth=1.6 if label == "test" else 1.1, label=f"{method} ({label})")
    ed_rows = next((rows for m, rows in runs.items() if m.split("+")[0] == "ed"), [])   # ed+dkd switches alike
    for row, prev in zip(ed_rows[1:], ed_rows):
        if row.get("grade") != prev.get("grade"):
            x = row["epoch"] - 0.5
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1)
            parts = [f"grade {row.get('grade')}"]
            if row.get("num_classes") is not None:
                parts.append(f"{row['num_classes']} classes")
            if row.get("blocks") is not None:
                parts.append(f"{row['blocks']} blocks")
            ax.annotate(", ".join(parts), xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -4),
                        textcoords="offset points", rotation=90, va="top", ha="left", fontsize=8, color="0.3",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if not runs:
        ax.text(0.5, 0.5, "no student epochs in this run", transform=ax.transAxes, ha="center", va="center")
    name = (summary or {}).get("experiment")
    ax.set_title(f"{name + ': ' if name else ''}top-1 accuracy per epoch "
                 "(ed: on the classes seen so far; dashed lines = grade switches)", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = _tmp(path)
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def safe_dir_name(method: str) -> str:
    """"teacher:group0" -> "teacher_group0": a portable directory name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(method)).strip("._") or "unnamed"


def epoch_scalars(row: dict) -> dict:
    """{tag: value} of one epoch's metrics: what TensorBoard, MLflow and W&B get (finite values only)."""
    return {tag: float(row[key]) for tag, key in SCALARS.items() if _finite(row.get(key))}


def write_tensorboard(log_dir: Path, history: list) -> Path:
    """One event directory per method (log_dir/<method>/), one scalar per metric per epoch (step =
    epoch). Each is built in a temporary directory that replaces log_dir/<method>, so re-writing (e.g.
    after a resumed run, or over the live files of `tracking`) never duplicates steps and an interrupted
    write leaves the previous directory intact. Directories of other stages (teachers' live files) stay."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for method, rows in _by_method(history).items():
        final = log_dir / safe_dir_name(method)
        tmp, old = _tmp(final), final.with_name(f".{final.name}.{os.getpid()}.old")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            writer = SummaryWriter(log_dir=str(tmp))
            try:
                for row in rows:
                    for tag, value in epoch_scalars(row).items():
                        writer.add_scalar(tag, value, global_step=int(row["epoch"]))
            finally:
                writer.close()
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                final.replace(old)
            tmp.replace(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return log_dir


# ---- reading ----------------------------------------------------------------------------------

def _read_json(path: Path, run_dir: Path):
    if not path.is_file():
        raise RunDirError(f"{path}: not found; {run_dir} is not a finished raydistill run")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path}: unreadable ({err})") from None


def _read_parquet_history(path: Path) -> list:
    import pyarrow.parquet as pq
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several kinds
        raise RunDirError(f"{path}: unreadable ({err})") from None
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def load_local_run(run_dir) -> tuple:
    """(summary, history) of a finished run: summary.json, and the history from metrics.json (or
    metrics.parquet when metrics.json is absent). RunDirError, naming the file, otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path, run_dir)
    if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict):
        raise RunDirError(f"{summary_path}: no 'methods' table; not a raydistill run summary")
    summary.setdefault("teachers", {})
    metrics_path, parquet_path = run_dir / "metrics.json", run_dir / "metrics.parquet"
    if metrics_path.is_file() or not parquet_path.is_file():
        metrics = _read_json(metrics_path, run_dir)
        if not isinstance(metrics, dict) or not isinstance(metrics.get("history", []), list):
            raise RunDirError(f"{metrics_path}: no 'history' list; not a raydistill metrics file")
        history = metrics.get("history", [])
    else:
        history = _read_parquet_history(parquet_path)
    return summary, history


def report_text(run_dir) -> str:
    """The results table the run printed at its end (byte for byte: same summary, same formatter)."""
    summary, _ = load_run(run_dir)   # a local run directory or a URI
    return format_table(summary["methods"], summary.get("teachers") or {})


REPORT_FILES = ("summary.json", "metrics.json", "metrics.parquet")


def load_run(location) -> tuple:
    """(summary, history) of a finished run, from a local run directory or a run directory URI
    (`s3://…`): summary.json and the per-epoch metrics. Raises RunDirError naming what is missing."""
    if not is_uri(location):
        return load_local_run(location)
    run = RunDir(location)
    if not run.exists():
        raise RunDirError(f"{location}: no such run directory")
    tmp = Path(tempfile.mkdtemp(prefix="raydistill-run-"))
    try:
        for name in REPORT_FILES:
            if run.is_file(name):
                (tmp / name).write_bytes(run.read_bytes(name))
        return load_local_run(tmp)
    except RunDirError as err:  # name the URI, not the temporary copy
        raise RunDirError(str(err).replace(str(tmp), str(location).rstrip("/"))) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
