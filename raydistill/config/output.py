"""Where a run's results go: the `output` directory, and the live trackers of `tracking`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from raydistill.config.errors import ConfigError, need

WANDB_MODES = ("online", "offline", "disabled")
# tracker section -> (module it imports, the extra that installs it)
TRACKER_PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


@dataclass
class OutputConfig:
    """`output`: where the run directory goes."""
    dir: str = "runs"                   # a local path (or a mount every node shares) or a storage URI: s3://bucket/runs
    name: Optional[str] = None          # run directory name; default: the experiment name

    def check(self) -> None:
        need(bool(self.dir), "output.dir", "a directory path", self.dir)


@dataclass
class MLflowConfig:
    """`tracking.mlflow`: log every epoch to MLflow, one MLflow run per stage."""
    tracking_uri: Optional[str] = None  # required: http://host:5000, file:/path/mlruns, sqlite:///mlflow.db
    experiment: Optional[str] = None    # MLflow experiment (created if missing); default: the experiment name

    def check(self) -> None:
        m = self
        need(isinstance(m.tracking_uri, str) and bool(m.tracking_uri.strip()),
             "tracking.mlflow.tracking_uri", "the MLflow tracking URI (http://host:5000, file:/path/mlruns, "
             "sqlite:///path/mlflow.db)", m.tracking_uri)
        need(m.experiment is None or bool(m.experiment), "tracking.mlflow.experiment",
             "an MLflow experiment name or null (the experiment's name)", m.experiment)


@dataclass
class WandbConfig:
    """`tracking.wandb`: log every epoch to Weights & Biases, one W&B run per stage."""
    project: Optional[str] = None       # default: the experiment name
    mode: str = "online"                # online | offline (files only, `wandb sync` later) | disabled

    def check(self) -> None:
        w = self
        need(w.mode in WANDB_MODES, "tracking.wandb.mode", f"one of {list(WANDB_MODES)}", w.mode)
        need(w.project is None or bool(w.project), "tracking.wandb.project",
             "a W&B project name or null (the experiment's name)", w.project)


@dataclass
class TrackingConfig:
    """`tracking`: live metrics of every epoch (TensorBoard, MLflow, Weights & Biases)."""
    tensorboard: bool = True            # live event files in <run>/tensorboard/<stage>/, every epoch
    mlflow: Optional[MLflowConfig] = None   # null: off
    wandb: Optional[WandbConfig] = None     # null: off

    def check(self) -> None:
        """Each tracker's settings, and its package: a missing one fails here, naming the extra, not in a
        worker after the teachers trained."""
        import importlib.util
        for tracker in (self.mlflow, self.wandb):
            if tracker is not None:
                tracker.check()
        for section, (module, extra) in TRACKER_PACKAGES.items():
            if getattr(self, section) is not None and importlib.util.find_spec(module) is None:
                raise ConfigError(f"tracking.{section}: the {module} package is not installed; "
                                  f"install it with pip install 'raydistill[{extra}]' (or set tracking.{section}: null)")
