"""Live tracking of a search: one MLflow run / W&B run per trial through Ray Tune's own logger
callbacks; the trials' own run directories then keep only their TensorBoard files."""
from __future__ import annotations

from raydistill.config import Experiment


def tune_callbacks(exp: Experiment) -> list:
    """Tune logger callbacks for a search whose base experiment configures trackers: one MLflow / W&B
    run per trial with the epochs the trial reports to Tune."""
    callbacks = []
    tr = exp.tracking
    if tr.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback
        callbacks.append(MLflowLoggerCallback(tracking_uri=tr.mlflow.tracking_uri,
                                              experiment_name=tr.mlflow.experiment or exp.name))
    if tr.wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback
        callbacks.append(WandbLoggerCallback(project=tr.wandb.project or exp.name, mode=tr.wandb.mode))
    return callbacks


# overrides that leave a trial's own MLflow / W&B logging off (Tune's callbacks log the trial)
TRIAL_TRACKING_OFF = ["tracking.mlflow=null", "tracking.wandb=null"]
