"""Live metrics: TensorBoard event files hold each epoch while the run goes, MLflow (a local file
store, read back with mlflow's client) and W&B (offline run directory) get the same values as
metrics.json; the progress bar only on a terminal; tracker settings validated before any work."""
from __future__ import annotations

import io
import json

import pytest

from raydistill.config import ConfigError, Experiment
from conftest import tiny_experiment


def small_experiment(tmp_path, **overrides):
    """Two methods, three one-epoch grades, one-epoch teachers on ~24 images per class: seconds."""
    return tiny_experiment(tmp_path / "runs", **{
        "methods": "[ed, scratch]", "data.train_per_class": 24, "data.test_per_class": 10, "teachers.epochs": 1,
        "curriculum.grade_epochs": "[1, 1, 1]", **overrides})


def scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {s.step: s.value for s in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


@pytest.mark.slow   # a whole local run with every tracker
def test_trackers_log_every_epoch_live_and_match_metrics(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient
    from raydistill.pipeline.local import run

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = small_experiment(tmp_path, **{"tracking.mlflow.tracking_uri": store, "tracking.mlflow.experiment": "ed-test",
                                        "tracking.wandb.mode": "offline", "tracking.wandb.project": "raydistill-test"})
    run_dir = tmp_path / "runs" / "tiny"
    seen = {}

    def progress(line: str) -> None:
        # the line of ed's epoch 2 comes after epoch 1 was logged, long before the run ends
        if line.split()[:1] == ["ed"] and " epoch   2/" in line:
            seen["ed_epoch1"] = scalars(run_dir / "tensorboard" / "ed", "accuracy/val")
            seen["teacher"] = scalars(run_dir / "tensorboard" / "teacher_group0", "loss/total")
            seen["finished"] = (run_dir / "summary.json").exists()

    run(exp, progress=progress)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    ed_val = {r["epoch"]: r["val_acc"] for r in history if r["method"] == "ed"}
    assert seen["finished"] is False
    assert seen["ed_epoch1"] == {1: pytest.approx(ed_val[1])}
    assert set(seen["teacher"]) == {1}                                     # teachers are watched too

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("ed-test")
    runs = {r.data.tags["raydistill.stage"]: r for r in client.search_runs([experiment.experiment_id])}
    assert {"ed", "scratch", "teacher:group0", "teacher:group1", "teacher:group2"} <= set(runs)
    for method in ("ed", "scratch"):
        rows = [r for r in history if r["method"] == method]
        assert len(rows) == 3
        for tag, key in (("accuracy/val", "val_acc"), ("accuracy/test", "test_acc"), ("loss/total", "loss"),
                         ("lr", "lr"), ("images_per_s", "images_per_s")):
            logged = client.get_metric_history(runs[method].info.run_id, tag)
            assert sorted((m.step, m.value) for m in logged) == [(r["epoch"], pytest.approx(r[key])) for r in rows]
        assert runs[method].info.status == "FINISHED"
        assert runs[method].data.params["curriculum.grade_epochs"] == "[1, 1, 1]"

    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 5                                               # one W&B run per stage
    assert all(list(d.glob("run-*.wandb")) for d in offline)
    # the end of the run rewrote each method's event files from metrics.json: one file, every epoch
    assert len(list((run_dir / "tensorboard" / "ed").glob("events.out.tfevents.*"))) == 1
    assert scalars(run_dir / "tensorboard" / "ed", "accuracy/val") == {e: pytest.approx(v) for e, v in ed_val.items()}


@pytest.mark.slow   # local stages logged to MLflow, twice
def test_a_resumed_stage_continues_its_mlflow_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from raydistill.storage import RunDir
    from raydistill.pipeline.tracking import LiveMetrics

    exp = small_experiment(tmp_path, **{"tracking.mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                        "tracking.tensorboard": "false"})
    out = RunDir(tmp_path / "run")
    with LiveMetrics(exp, out, "method:ed") as live:
        live.log({"epoch": 1, "val_acc": 0.25})
    with pytest.raises(KeyboardInterrupt), LiveMetrics(exp, out, "method:ed") as live:
        live.log({"epoch": 2, "val_acc": 0.5})
        raise KeyboardInterrupt
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy/val")] == \
        [(1, 0.25), (2, 0.5)]
    assert run.info.status == "FAILED"


def test_tensorboard_for_a_uri_run_dir_is_uploaded_every_epoch(tmp_path):
    from raydistill.storage import RunDir
    from raydistill.pipeline.tracking import LiveMetrics

    exp = small_experiment(tmp_path)
    out = RunDir(f"file://{tmp_path / 'bucket' / 'run'}")   # a pyarrow URI: staged locally, uploaded
    assert out.local_path is None
    with LiveMetrics(exp, out, "teacher:group1") as live:
        live.log({"epoch": 1, "loss": 2.5, "val_acc": 0.1})
        assert scalars(tmp_path / "bucket" / "run" / "tensorboard" / "teacher_group1", "loss/total") == {1: 2.5}


def test_progress_bar_on_a_terminal_plain_lines_elsewhere():
    from raydistill.pipeline.progress import StageBar, interactive

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert interactive(Terminal()) and not interactive(io.StringIO())
    screen = Terminal()
    bar = StageBar("ed", 4, grades=2, stream=screen)
    bar.update({"epoch": 1, "grade": 1, "val_acc": 0.5, "images_per_s": 1234.0})
    bar.update({"epoch": 4, "grade": 2, "val_acc": 0.625, "images_per_s": 999.0})
    bar.close()
    first, last = screen.getvalue().split("\r")[1:]
    assert "[######------------------] 1/4 epochs" in first and "grade 1/2" in first and "1234 img/s" in first
    assert "ETA " in first and "val 0.500" in first
    assert "4/4 epochs" in last and "took " in last and last.endswith("\n")


@pytest.mark.slow   # starts Ray (session instance)
def test_driver_bar_draws_the_epochs_ray_train_reports(ray_session):
    """Under Ray the bar is drawn by the driver from the reports the Train controller sees: the callback
    (called here as the controller would) forwards them through a Ray queue; one bar per stage."""
    from raydistill.distributed.driver_bar import DriverBar
    screen = io.StringIO()
    bar = DriverBar(stream=screen)
    report = {"grade": 1, "images_per_s": 50.0, "val_acc": 0.5, "stage_grades": 1, "loss": 1.0}
    for stage, epoch, total in (("teacher:group0", 1, 2), ("teacher:group0", 2, 2), ("method:ed", 1, 3)):
        bar.callback.after_report(None, [{**report, "stage": stage, "epoch": epoch, "stage_epochs": total}], None)
    bar.callback.after_report(None, [{"stage": "done"}], None)              # the final report: no bar
    bar.close()
    lines = screen.getvalue().split("\n")
    assert "teacher:group0 [" in lines[0] and "2/2 epochs" in lines[0] and "took " in lines[0]
    assert lines[1].strip().startswith("ed [") and "1/3 epochs" in lines[1] and "ETA " in lines[1]
    assert lines[2:] == [""]


@pytest.mark.slow   # starts Ray (session instance)
def test_driver_bar_draws_the_epochs_a_one_worker_task_reports(ray_session, tmp_path):
    """A stage run as a Ray task (no Train controller) puts its epochs on the driver's bar queue itself."""
    from raydistill.distributed.driver_bar import DriverBar
    from raydistill.distributed.worker import SoloSession
    from raydistill.storage import RunDir
    screen = io.StringIO()
    bar = DriverBar(stream=screen)
    session = SoloSession(Experiment(), RunDir(tmp_path), bar_queue=bar.queue)
    report = {"grade": 1, "images_per_s": 50.0, "val_acc": 0.5, "stage_grades": 1, "loss": 1.0}
    for epoch in (1, 2):
        session.report({**report, "stage": "method:ed", "epoch": epoch, "stage_epochs": 2}, None, epoch)
    session.report({"stage": "done"}, None, 3)                               # the final report: no bar
    bar.close()
    lines = screen.getvalue().split("\n")
    assert lines[0].strip().startswith("ed [") and "2/2 epochs" in lines[0] and "took " in lines[0]
    assert lines[1:] == [""]


@pytest.mark.parametrize("overrides, field", [
    (["tracking.mlflow={experiment: x}"], "tracking.mlflow.tracking_uri"),
    (["tracking.mlflow={tracking_uri: file:/tmp/m, experimnt: x}"], "tracking.mlflow.experimnt"),
    (["tracking.wandb.mode=sometimes"], "tracking.wandb.mode"),
    (["tracking.wandb=3"], "tracking.wandb"),
])
def test_tracker_settings_are_validated(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Experiment().with_overrides(overrides).validate()


def test_a_missing_tracker_package_names_the_extra(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tracking\.wandb: .*pip install 'raydistill\[wandb\]'"):
        Experiment().with_overrides(["tracking.wandb.mode=offline"]).validate()
