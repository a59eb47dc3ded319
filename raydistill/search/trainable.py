"""One Tune trial = one run (`run_distributed`) of the space's method (the ed curriculum, or a
searched baseline) with the trial's values.

A one-worker trial trains in the trial's own process (which then holds the worker's CPUs, and its
GPUs with `ray.use_gpu`): no TorchTrainer, no Ray Train start-up, on the same stage executor as a
run's one-worker stages. A trial of several workers is a driver that holds almost no CPU
(TRIAL_CPU) and one Ray Train fit whose workers hold the cores. Either way every ed epoch is
forwarded to Tune, so ASHA can stop a weak curriculum after any epoch; the final "done" report of
the run (no accuracy) is not.
"""
from __future__ import annotations

from typing import Optional

from raydistill.config import Experiment
from raydistill.search.space import apply_values
from raydistill.search.tracking import TRIAL_TRACKING_OFF

# what each epoch report carries to Tune (the rest of the run's metrics stay in its run directory)
FORWARDED = ("epoch", "grade", "num_classes", "blocks", "lr", "loss", "train_acc", "val_acc", "val_acc_all_classes",
             "test_acc")
# What the scheduler (ASHA, HyperBand) and a model-based searcher compare: validation accuracy over
# every class, untaught classes counting as errors. `val_acc` before the last grade is over the
# classes seen so far, so trials in different grades (searched grade_epochs) or taught different
# groups (searched order) would be ranked on different questions. At the last epoch both are equal.
SCHEDULE_METRIC = "val_acc_all_classes"
TRIAL_CPU = 0.01   # the trial driver only waits on its TorchTrainer; the workers need the cores
# How every trial is placed, whatever the base says: its teacher stages only load the search's
# teachers (trained once, before the trials, one task each), so they are one-worker stages, and
# its stages run in order (the epoch reports reach Tune from that one executor, not from a
# concurrent stage's thread). Without these, `ray.teacher_workers > 1` made a one-worker trial
# start a Ray Train fit its own reservation had no room for.
# (What a trial runs, `methods`, is the space's `method`, already in the base: space_from_dict.)
TRIAL_PLACEMENT = ("ray.teacher_workers=1", "ray.stages=sequential")


def trial_name(index: int) -> str:
    return f"trial-{index:03d}"


def trial_experiment(base: dict, values: dict, teachers: dict, trials_dir: str, index: int,
                     cpus_per_worker: float) -> Experiment:
    """The complete experiment a trial runs: base (its one method) + searched values, the search's teachers."""
    exp = apply_values(Experiment.from_dict(base), values)
    return exp.with_overrides([
        *TRIAL_PLACEMENT,
        f"teachers.checkpoints={flow_yaml(teachers)}",
        f"output.dir={flow_yaml(trials_dir)}",
        f"output.name={trial_name(index)}",
        f"ray.cpus_per_worker={cpus_per_worker}",
        *TRIAL_TRACKING_OFF,   # the search's Tune logger callbacks log each trial to MLflow / W&B
    ]).validate()


def flow_yaml(value) -> str:
    """A value as one line of YAML (for --set style overrides)."""
    import yaml
    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip().removesuffix("...").strip()


def name_by_creation(trial) -> str:
    """Tune's trial_name_creator for a model-based search: trial-NNN in the order the searcher created
    the trials (Tune's experiment tag starts with that 1-based counter), the trial's run directory name."""
    return trial_name(int(trial.experiment_tag.split("_", 1)[0]) - 1)


def name_by_candidate(trial) -> str:
    """Tune's trial_name_creator under PBT: trial-NNN of the candidate the trial started as (an
    exploit copies the donor's whole config, its candidate index too; the name stays)."""
    return trial_name(int(trial.config["candidate"]["index"]))


def trial_values(config: dict, setup: dict) -> tuple:
    """(index, {path: value}) of this trial: a pre-drawn candidate (random, grid) carries both; a
    model-based searcher's config is decoded, and its index is in the trial's name (name_by_creation);
    under PBT the values are the candidate's as Tune last perturbed them, the index the trial's name's."""
    if setup.get("pbt"):
        from ray import tune
        from raydistill.search.pbt import resolve_values
        return (int(tune.get_context().get_trial_name().split("-")[1]),
                resolve_values(config["candidate"]["values"], setup["pbt"]["total_epochs"]))
    if "candidate" in config:
        return config["candidate"]["index"], config["candidate"]["values"]
    from ray import tune
    from raydistill.search.searchers import decode
    return int(tune.get_context().get_trial_name().split("-")[1]), decode(setup["dimensions"], config)


def run_trial(config: dict, setup: dict) -> None:
    """Tune function trainable. config: {"candidate": {"index", "values"}} or a model-based searcher's
    {path: encoded value}; setup (tune.with_parameters): the base experiment, the dimensions, teacher
    paths, trials directory, CPUs per worker and whether the trial trains in its own process."""
    import os
    from raydistill.distributed.trainer import run_distributed

    # how the search's storage URI is reached (endpoint, credentials): the trial resolves it as the
    # driver did, also on a Ray instance started without them
    os.environ.update(setup.get("storage_env") or {})
    index, values = trial_values(config, setup)
    exp = trial_experiment(setup["base"], values, setup["teachers"], setup["trials_dir"], index,
                           setup["cpus_per_worker"])
    # where the search reserved room for it (tuner._resources): in this process, or a driver of a fit
    if setup.get("pbt"):
        run_pbt_trial(exp, index, config["candidate"]["values"], setup["pbt"]["interval"])
    elif setup.get("in_process", trains_in_trial(exp)):
        run_distributed(exp, progress=print, in_process=True, on_report=epoch_reporter(exp.total_epochs()))
    else:
        run_distributed(exp, progress=print, callbacks=[epoch_report_callback(exp.total_epochs())])


def run_pbt_trial(exp: Experiment, index: int, values: dict, interval: int) -> None:
    """A PBT trial: continue from Tune's checkpoint (an exploit: in the donor's grade, with its
    state), train in this process, report a checkpoint every `interval` epochs (pbt_trial.py)."""
    from ray import tune
    from raydistill.distributed.trainer import run_distributed
    from raydistill.search.pbt_trial import PBTTrial
    trial = PBTTrial(exp, trial_name(index), values, interval)
    trial.restore(tune.get_checkpoint())
    run_distributed(exp, progress=print, in_process=True, on_report=trial.reporter(exp.total_epochs(), forwarded))


def trains_in_trial(exp: Experiment, streaming: bool = False) -> bool:
    """A trial runs in the trial's own process when every stage of its run is a one-worker task (see
    `pipeline.graph.stage_executor`; streamed data, `streaming` as the search's data preparation
    resolved it, always goes through a Ray Train fit). Given the base experiment, it answers for
    the trials (TRIAL_PLACEMENT applied)."""
    from raydistill.pipeline.graph import TASK, stage_executor, stage_graph
    exp = exp.with_overrides(list(TRIAL_PLACEMENT))
    streaming = streaming or exp.data.loader == "stream"
    return all(stage_executor(exp, stage, streaming) == TASK for stage in stage_graph(exp, exp.num_groups()))


def trial_resources(exp: Experiment, cpus_per_worker: float, streaming: bool = False) -> dict:
    """What each trial reserves (tune.with_resources): a trial that trains in its own process holds
    its worker's CPUs and, with `ray.use_gpu`, its GPUs (Ray shows a task only the GPUs it
    reserved: without them the trial sees none, or every trial lands on the same one); a trial
    driving a Ray Train fit holds TRIAL_CPU, the fit's workers hold the rest."""
    if not trains_in_trial(exp, streaming):
        return {"cpu": TRIAL_CPU}
    return {"cpu": cpus_per_worker, **({"gpu": exp.ray.gpus_per_worker} if exp.ray.use_gpu else {})}


def forwarded(report: dict, epochs_planned: int) -> Optional[dict]:
    """What Tune gets of one epoch report: the method stage's epochs only (a trial runs one method; not
    teacher stages, none when loaded, nor the final "done" report), with the trial's planned epochs."""
    if not str(report.get("stage", "")).startswith("method:") or "val_acc" not in report:
        return None
    return {**{k: report[k] for k in FORWARDED if k in report}, "epochs_planned": epochs_planned}


def epoch_reporter(epochs_planned: int):
    """The `on_report` of a trial that trains in its own process: each ed epoch to `tune.report`."""
    from ray import tune

    def report(metrics: dict) -> None:
        out = forwarded(metrics, epochs_planned)
        if out is not None:
            tune.report(out)
    return report


def epoch_report_callback(epochs_planned: int):
    """A Ray Train callback (runs in the Train controller) that forwards each ed epoch to Tune,
    with the trial's planned epochs (the scheduler lets a trial's last epoch end on its own).
    Built here because TuneReportCallback must be created inside the Tune trial."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            out = forwarded(metrics[0] if metrics else {}, epochs_planned)
            if out is not None:
                super().after_report(run_context, [out], None)

    return EpochReport()


def finishing_last_epoch(scheduler_cls):
    """`scheduler_cls` that never stops (or pauses) a trial at its own last epoch: the trial is
    finishing anyway, and a stop there would kill it before its run directory gets summary.json and
    the final checkpoint."""
    from ray.tune.schedulers import TrialScheduler

    class Scheduler(scheduler_cls):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if result.get("epoch", 0) >= result.get("epochs_planned", float("inf")):
                return TrialScheduler.CONTINUE
            return decision

    Scheduler.__name__ = Scheduler.__qualname__ = f"Curriculum{scheduler_cls.__name__}"
    return Scheduler


def curriculum_asha(max_t: int, grace_period: int, reduction_factor: int):
    """ASHA on the reported epoch that lets every trial finish its last epoch."""
    from ray.tune.schedulers import ASHAScheduler

    # time is the reported epoch, not Tune's report count: a trial restored mid-run (its run resumes
    # from an epoch checkpoint) must be judged at its real epoch.
    # max_t + 1: ASHA's own "reached max_t" stop must not fire at the longest trial's last epoch
    return finishing_last_epoch(ASHAScheduler)(time_attr="epoch", max_t=max_t + 1,
                                               grace_period=min(grace_period, max_t),
                                               reduction_factor=reduction_factor)


def curriculum_bohb_hyperband(max_t: int, reduction_factor: int):
    """BOHB's HyperBand (HyperBandForBOHB) on the reported epoch; it pauses trials at its rungs and
    resumes them later (the trial's run resumes from its epoch checkpoint), and lets every trial
    finish its last epoch."""
    from ray.tune.schedulers import HyperBandForBOHB
    return finishing_last_epoch(HyperBandForBOHB)(time_attr="epoch", max_t=max_t + 1,
                                                  reduction_factor=reduction_factor)
