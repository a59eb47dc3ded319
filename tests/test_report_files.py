"""Report files of a run (parquet, curves.png, TensorBoard) and reading a run directory back —
on a synthetic history and summary, no training."""
from __future__ import annotations

import json
import math

import pytest

from raydistill.distill.curriculum import plan_ed, plan_single_grade
from raydistill.pipeline.summary import format_table, method_summary
from raydistill.pipeline.report_files import RunDirError, load_run, report_text, write_report_files
from raydistill.pipeline.prepare import write_json

GROUPS = [[0, 1], [2, 3], [4, 5]]
GRADE_EPOCHS = [2, 2, 3]


def _epoch(method, grade, epoch, classes, blocks, acc, **extra):
    return {"method": method, "grade": grade, "epoch": epoch, "lr": 0.05 / epoch, "num_classes": classes,
            "blocks": blocks, "loss": 2.0 / epoch, "ce": 1.5 / epoch, "kd": 0.5 / epoch, "train_acc": acc + 0.05,
            "train_images": 600, "seconds": 1.25, "images_per_s": 480.0, "val_acc": acc - 0.01,
            "test_acc": acc, **extra}


def synthetic_run():
    ed = plan_ed("resnet20", 3, GROUPS, splits=[1, 2, 3], order=[0, 1, 2], grade_epochs=GRADE_EPOCHS,
                 head_widths=[16, 32])
    scratch = plan_single_grade("scratch", "resnet20", 3, GROUPS, sum(GRADE_EPOCHS))
    history = [_epoch("teacher:group0", 1, e, 2, 3, 0.5 + 0.1 * e) for e in (1, 2)]
    for g in ed.grades:
        for e in range(g.first_epoch, g.first_epoch + g.epochs):
            history.append(_epoch("ed", g.index + 1, e + 1, g.num_classes, g.split, 0.2 + 0.07 * e + 1 / 9))
    for e in range(scratch.total_epochs):
        extra = {"note": "last"} if e == scratch.total_epochs - 1 else {}
        history.append(_epoch("scratch", 1, e + 1, 6, 3, 0.2 + 0.05 * e + 1 / 7, **extra))
    history[-2]["val_acc"] = float("nan")  # e.g. an epoch without a validation split
    teachers = {"group0": {"arch": "resnet20", "classes": 2, "source": "trained", "params": 1234,
                           "seconds": 3.5, "test_acc": 0.8712345}}
    methods = {p.method: method_summary(p, history, 27_000 + i, 12.345678 * (i + 1))
               for i, p in enumerate((ed, scratch))}
    return history, {"experiment": "synthetic", "teachers": teachers, "methods": methods}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run as the runner leaves it, plus the report files."""
    out = tmp_path_factory.mktemp("run")
    history, summary = synthetic_run()
    (out / "config.yaml").write_text("name: synthetic\n")
    write_json(out / "metrics.json", {"teachers": summary["teachers"], "methods": summary["methods"],
                                      "history": history})
    write_json(out / "summary.json", summary)
    paths = write_report_files(out, history, summary)
    return out, paths, history, summary


def test_parquet_rows_and_columns(run_dir):
    import pyarrow.parquet as pq
    out, paths, history, _ = run_dir
    assert paths["parquet"] == out / "metrics.parquet"
    table = pq.read_table(paths["parquet"])
    assert table.num_rows == len(history) == 2 + 7 + 7
    for col in ("method", "grade", "epoch", "lr", "loss", "ce", "kd", "train_acc", "val_acc", "test_acc",
                "images_per_s", "seconds", "num_classes", "blocks", "note"):
        assert col in table.column_names, col
    rows = table.to_pylist()
    assert [r["method"] for r in rows].count("ed") == 7
    assert {r["method"] for r in rows} == {"teacher:group0", "ed", "scratch"}
    assert [r["grade"] for r in rows if r["method"] == "ed"] == [1, 1, 2, 2, 3, 3, 3]
    assert [r["num_classes"] for r in rows if r["method"] == "ed"] == [2, 2, 4, 4, 6, 6, 6]
    assert rows[-1]["note"] == "last" and rows[0]["note"] is None     # a key of one row only: null elsewhere
    assert math.isnan(rows[-2]["val_acc"])
    assert rows[3]["test_acc"] == history[3]["test_acc"]
    assert not list(out.glob(".*.tmp"))                                   # no temporary files left


def test_curves_png(run_dir):
    import matplotlib.image as mpimg
    out, paths, _, _ = run_dir
    png = paths["curves"]
    assert png == out / "curves.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0.01                                             # not a blank canvas


def test_tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, paths, _, _ = run_dir
    assert paths["tensorboard"] == out / "tensorboard"
    assert {p.name for p in paths["tensorboard"].iterdir()} == {"ed", "scratch", "teacher_group0"}
    for method, epochs in (("ed", 7), ("scratch", 7), ("teacher_group0", 2)):
        assert list((paths["tensorboard"] / method).glob("events.out.tfevents.*"))
        acc = EventAccumulator(str(paths["tensorboard"] / method))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"accuracy/train", "accuracy/val", "accuracy/test", "loss/total", "loss/ce", "loss/kd", "lr",
                "images_per_s"} <= tags
        test = acc.Scalars("accuracy/test")
        assert [s.step for s in test] == list(range(1, epochs + 1))
    ed = EventAccumulator(str(paths["tensorboard"] / "ed"))
    ed.Reload()
    assert ed.Scalars("accuracy/test")[-1].value == pytest.approx(0.2 + 0.07 * 6 + 1 / 9)
    sc = EventAccumulator(str(paths["tensorboard"] / "scratch"))
    sc.Reload()
    assert len(sc.Scalars("accuracy/val")) == 6                           # the NaN epoch is left out


def test_rewriting_replaces_files(run_dir, tmp_path):
    _, _, history, summary = run_dir
    write_report_files(tmp_path, history[:5], summary)
    paths = write_report_files(tmp_path, history, summary)               # e.g. after a resumed run
    events = list((paths["tensorboard"] / "ed").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_text_is_the_printed_table(run_dir):
    out, _, _, summary = run_dir
    printed = format_table(summary["methods"], summary["teachers"])
    assert report_text(out) == printed
    assert "ed per grade" in printed and "n/a" not in printed


def test_load_run_round_trip(run_dir, tmp_path):
    out, _, history, summary = run_dir
    loaded_summary, loaded_history = load_run(out)
    assert loaded_summary == json.loads(json.dumps(summary))
    assert len(loaded_history) == len(history) and loaded_history[0] == history[0]
    # without metrics.json the history comes from metrics.parquet
    for name in ("summary.json", "metrics.parquet"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    s2, h2 = load_run(tmp_path)
    assert s2 == loaded_summary
    assert len(h2) == len(history) and h2[0] == history[0] and "note" not in h2[0] and h2[-1]["note"] == "last"
    assert report_text(tmp_path) == report_text(out)


def test_load_run_errors_name_the_file(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("name: x\n")                    # started, never finished
    with pytest.raises(RunDirError, match="summary.json"):
        load_run(tmp_path)
    with pytest.raises(RunDirError, match="summary.json"):
        report_text(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(RunDirError, match="summary.json.*unreadable"):
        load_run(tmp_path)
    write_json(tmp_path / "summary.json", {"experiment": "x", "teachers": {}, "methods": {}})
    with pytest.raises(RunDirError, match="metrics.json"):
        load_run(tmp_path)
