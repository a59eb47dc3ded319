"""Live metrics: after every epoch the process that trains a stage (rank 0 under Ray) logs the epoch's
scalars (`report_files.epoch_scalars`: loss terms, train/val/test accuracy, lr, images/s, grade) to

* TensorBoard (`tracking.tensorboard`, on by default): `<run>/tensorboard/<stage>/`. A local run
  directory is written in place; for a URI (s3://…) the event files are written to a local folder and
  uploaded through `RunDir` after each epoch (torch's SummaryWriter has no pyarrow filesystem). The end
  of the run rewrites each method's directory from metrics.json (`write_tensorboard`), which drops
  any step an interrupted attempt logged twice;
* MLflow (`tracking.mlflow`): one MLflow run per stage, found again by its tags when a run resumes,
  so a resumed stage continues its MLflow run instead of starting a second one. This uses
  `MlflowClient` rather than Ray's `setup_mlflow`, which always starts a new run and makes it the
  process-global active run (two stages of one process would share it);
* Weights & Biases (`tracking.wandb`): `wandb.init` with a run id derived from the run directory and
  stage, so a resumed stage resumes its W&B run. Ray's `setup_wandb` does not fit: it demands an API
  key even in offline mode.

Tune searches log trials with Tune's own MLflowLoggerCallback / WandbLoggerCallback instead
(`search.tracking.tune_callbacks`); their trial runs keep only the TensorBoard files.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from raydistill.config import Experiment
from raydistill.pipeline.report_files import epoch_scalars, safe_dir_name
from raydistill.storage import RunDir


def stage_label(stage: str) -> str:
    """A stage's name in trackers: "method:ed" -> "ed" (the name metrics.json uses), "teacher:group0" stays."""
    return stage.split(":", 1)[1] if stage.startswith("method:") else stage


class TensorBoardSink:
    def __init__(self, out: RunDir, label: str):
        from torch.utils.tensorboard import SummaryWriter
        self.out, self.name = out, f"tensorboard/{safe_dir_name(label)}"
        self.staging = None if out.local_path is not None else Path(tempfile.mkdtemp(prefix="raydistill-tb-"))
        folder = out.local_path / self.name if self.staging is None else self.staging
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, scalars: dict, step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
        if self.staging is not None:
            self.out.upload(self.staging, self.name)

    def close(self, failed: bool) -> None:
        self.writer.close()
        if self.staging is not None:
            self.out.upload(self.staging, self.name)
            shutil.rmtree(self.staging, ignore_errors=True)


class MLflowSink:
    def __init__(self, exp: Experiment, out: RunDir, label: str):
        from mlflow.tracking import MlflowClient
        cfg = exp.tracking.mlflow
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        name = cfg.experiment or exp.name
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        tags = {"raydistill.run_dir": out.location, "raydistill.stage": label, "raydistill.experiment": exp.name}
        query = " and ".join(f"tags.`{k}` = '{_quoted(v)}'" for k, v in tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
        if runs:   # a resumed stage continues its run
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, tags=tags,
                                                 run_name=f"{exp.run_name()}/{label}").info.run_id
            self._log_params(exp)

    def _log_params(self, exp: Experiment) -> None:
        from mlflow.entities import Param
        from raydistill.pipeline.prepare import flatten
        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(exp.to_dict()).items())]
        for i in range(0, len(params), 100):   # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _quoted(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


class WandbSink:
    def __init__(self, exp: Experiment, out: RunDir, label: str):
        import wandb
        cfg = exp.tracking.wandb
        run_id = hashlib.sha1(f"{out.location}|{label}".encode()).hexdigest()[:16]
        kwargs = {"project": cfg.project or exp.name, "mode": cfg.mode, "id": run_id, "resume": "allow",
                  "name": f"{exp.run_name()}/{label}", "group": exp.run_name(), "reinit": "create_new"}
        if out.local_path is not None:   # offline files next to the run's other files
            kwargs["dir"] = str(out.local_path)
        self.run = wandb.init(config=exp.to_dict(), **kwargs)

    def log(self, scalars: dict, step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class LiveMetrics:
    """The configured sinks of one stage; `log(metrics)` once per epoch, `close()` at the stage's end."""

    def __init__(self, exp: Experiment, out: RunDir, stage: str):
        label = stage_label(stage)
        tr = exp.tracking
        self.sinks = []
        try:
            if tr.tensorboard:
                self.sinks.append(TensorBoardSink(out, label))
            if tr.mlflow is not None:
                self.sinks.append(MLflowSink(exp, out, label))
            if tr.wandb is not None:
                self.sinks.append(WandbSink(exp, out, label))
        except BaseException:
            self.close(failed=True)
            raise

    def log(self, metrics: dict) -> None:
        scalars = epoch_scalars(metrics)
        for sink in self.sinks:
            sink.log(scalars, int(metrics["epoch"]))

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed)
        self.sinks = []

    def __enter__(self) -> "LiveMetrics":
        return self

    def __exit__(self, kind, _value, _tb) -> None:
        self.close(failed=kind is not None)




