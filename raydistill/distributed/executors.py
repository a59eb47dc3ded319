"""Executors of the stage graph on Ray. Each runs the same worker loop (`worker.run_worker`, over
the same stage bodies of `pipeline.stages`) and writes the same checkpoints:

  task    a one-worker stage as a Ray task holding the worker's CPUs (and GPU): no process group,
          no Ray Train start-up; retried from its last epoch checkpoint up to `ray.max_failures`
  fit     a Ray Train fit (DDP over `workers` ranks, FailureConfig restarts), for several workers
          or streamed data (Ray Data feeds Train workers)
  graph   one Ray Train fit for every stage in order (`ray.stages: sequential` when a stage needs
          a fit: one start-up for the run)

`pipeline.graph.stage_executor` decides per stage; `run_stages_on_ray` runs the whole graph.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

from raydistill.config import Experiment
from raydistill.distributed.errors import RunInterrupted, stages_error
from raydistill.distributed.worker import run_here, train_loop
from raydistill.pipeline.checkpoints import latest_progress, run_progress
from raydistill.pipeline.graph import (FIT, OK, TASK, StageOutcome, StagesFailed, critical_paths, run_graph,
                                       stage_executor, stage_graph, stage_work, stage_workers, storage_name)
from raydistill.pipeline.results import result_from_progress, write_metrics
from raydistill.storage import RunDir, join, storage_env


def stage_config(exp: Experiment, out: RunDir, data_ref, name: str, stages: Optional[list], ready=(),
                 fail_once_at: Optional[tuple] = None, driver_bar: bool = False, bar_queue=None) -> dict:
    """What a worker loop needs: the experiment, the data's object-store reference, the run directory
    and this executor's checkpoint store `<run>/ray/<name>`."""
    return {"exp": exp.to_dict(), "data": data_ref, "run_dir": out.location,
            "storage": join(out.child("ray").location, name), "stages": stages, "ready": list(ready),
            "fail_once_at": list(fail_once_at) if fail_once_at else None,
            "driver_bar": driver_bar or bar_queue is not None, "bar_queue": bar_queue,
            "launched": time.time(),   # a stage's start-up: its first epoch's `started` minus this
            "driver_pid": os.getpid()}   # the process that started the stage and waits for it


def fit_stages(exp: Experiment, out: RunDir, data_ref, name: str, workers: int, *, stages: Optional[list] = None,
               ready: tuple = (), fail_once_at: Optional[tuple] = None, callbacks: Optional[list] = None,
               driver_bar: bool = False) -> dict:
    """One Ray Train run (storage `<run>/ray/<name>`) of `stages` (None: every stage). Returns its
    final progress (`latest_progress`). `driver_bar`: the driver draws the epochs (`DriverBar`), so
    workers print no per-epoch lines."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = exp.ray
    resources = {"CPU": exp.worker_cpus()}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker
    ray_storage = out.child("ray")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=stage_config(exp, out, data_ref, name, stages, ready, fail_once_at, driver_bar),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        # a URI: Ray Train writes its checkpoints through the same pyarrow filesystem, no local staging
        run_config=RunConfig(name=name, storage_path=ray_storage.root,
                             storage_filesystem=ray_storage.storage_filesystem,
                             failure_config=FailureConfig(max_failures=r.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks,
                             # Ray Train logs every report at INFO and, without a dashboard, warns
                             # every second that the state API is unavailable
                             logging_config=ray.LoggingConfig(log_level="ERROR"),
                             worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                                              **storage_env()}}))
    try:
        fit = trainer.fit()
    except ray.train.TrainingFailedError as err:
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        raise RunInterrupted(f"training failed ({reason}); re-run the same command to resume from the last "
                             f"epoch checkpoint in {ray_storage}", reason=reason) from err
    return latest_progress(fit.checkpoint, ray_storage.child(name))


def task_stages(exp: Experiment, out: RunDir, data_ref, name: str, stages: list, *, ready: tuple = (),
                fail_once_at: Optional[tuple] = None, log: Callable[[str], None] = print,
                in_process: bool = False, on_report: Optional[Callable[[dict], None]] = None,
                bar_queue=None, on_submit: Optional[Callable[[], None]] = None) -> dict:
    """`stages` as one worker in a Ray task that holds the worker's resources (`in_process`: in this
    process, e.g. a Tune trial that holds them; `on_report` then sees every epoch report). A task
    that fails is started again from its last epoch checkpoint, at most `ray.max_failures` times,
    as a fit's FailureConfig would. `bar_queue`: the driver's `DriverBar.queue`, which then draws
    the epochs. `on_submit()`: called once the task is submitted. Returns the store's final progress."""
    import ray
    config = stage_config(exp, out, data_ref, name, stages, ready, fail_once_at, bar_queue=bar_queue)
    if in_process:
        return run_here(config, on_report=on_report)
    r = exp.ray
    options = {"num_cpus": exp.worker_cpus(), "max_retries": 0, "runtime_env": {"env_vars": storage_env()}}
    if r.use_gpu:
        options["num_gpus"] = r.gpus_per_worker
    remote = ray.remote(**options)(run_here)
    failures = 0
    while True:
        submitted = remote.remote(config)
        if on_submit is not None:
            on_submit()
        try:
            return ray.get(submitted)
        except ray.exceptions.RayError as err:
            failures += 1
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}"
            if failures > r.max_failures:
                raise RunInterrupted(f"training failed ({reason}); re-run the same command to resume from the "
                                     f"last epoch checkpoint in {out.child('ray').child(name)}",
                                     reason=reason) from err
            log(f"{'+'.join(stages)}: the task failed ({reason}); restarting it from its last epoch checkpoint "
                f"({failures} of ray.max_failures {r.max_failures})")


def run_one_stage(exp: Experiment, out: RunDir, data_ref, stage: str, ready: list, streaming: bool,
                  fail_once_at: Optional[tuple] = None, log: Callable[[str], None] = print,
                  on_submit: Callable[[], None] = lambda: None, **task_options) -> StageOutcome:
    """One stage on the executor it is given (`stage_executor`); its StageOutcome says how it ended
    (a non-finite loss is the checkpoint's `aborted`, never a text match). `on_submit()`: called
    when its task is submitted (a fit: when it starts)."""
    fail_here = fail_once_at if fail_once_at and fail_once_at[0] == stage else None
    try:
        if stage_executor(exp, stage, streaming) == TASK:
            state = task_stages(exp, out, data_ref, storage_name(stage), [stage], ready=tuple(ready),
                                fail_once_at=fail_here, log=log, on_submit=on_submit, **task_options)
        else:
            on_submit()
            state = fit_stages(exp, out, data_ref, storage_name(stage), stage_workers(exp, stage), stages=[stage],
                               ready=tuple(ready), fail_once_at=fail_here)
    except RunInterrupted as err:
        return StageOutcome.failed(err.reason)
    if state["aborted"]:
        return StageOutcome.non_finite(state["aborted"])
    return StageOutcome.ok({stage: state["completed"][stage]})


def _drive(exp: Experiment, out: RunDir, graph: dict, launch: Callable, finished: Callable, log,
           priority: Optional[dict] = None) -> dict:
    """`pipeline.graph.run_graph` over the stages not completed by an earlier invocation, the metrics
    file rewritten by the driver whenever a stage ends; `finished(handles)` -> {handle: StageOutcome}
    of at least one. Returns {stage: record}; raises `stages_error` when a stage did not complete."""
    done = {s: r for s, r in run_progress(out)[0].items() if s in graph}

    def wait(handles):
        results = finished(handles)
        write_metrics(out, result_from_progress(exp, out, {**done, **{k: v for o in results.values()
                                                                       if o.status == OK
                                                                       for k, v in o.records.items()}}))
        return results

    try:
        return run_graph(graph, done, launch, wait, log, priority)
    except StagesFailed as err:
        raise stages_error(err.outcomes, out) from None


def run_concurrent(exp: Experiment, out: RunDir, data_ref, groups: list, streaming: bool, log,
                   fail_once_at: Optional[tuple] = None) -> dict:
    """Every stage on its own executor, each launched as soon as its teachers exist, the longest
    chain of work first (`critical_paths`; `groups`: the class lists). A stage is started and
    awaited by a thread of this process (its task or fit does the work): a driver of its own in a
    Ray task was a new process importing torch per stage, 10-15 s of a 2-core run's start-up, and
    the driver process is the run's anyway (Ray Train fits from a thread, as under Tune). Each
    launch waits until its stage's task is submitted, so the first stages in that order take the
    free CPUs (threads left to race submitted them in any order); Ray promises no order for the
    tasks queued behind them. Returns {stage: record}."""
    import functools
    import queue
    import threading
    from raydistill.distill.budget import model_train_flops
    graph = stage_graph(exp, len(groups))
    flops = functools.lru_cache(maxsize=None)(lambda arch, classes: model_train_flops(arch, classes, exp.image_size()))
    priority = critical_paths(graph, {s: stage_work(exp, s, groups, flops) for s in graph})
    ended = queue.Queue()   # (stage, StageOutcome), in the order the stages end

    def drive(stage, submitted):
        try:
            outcome = run_one_stage(exp, out, data_ref, stage, graph[stage], streaming, fail_once_at, log,
                                    on_submit=submitted.set)
        except Exception as err:   # noqa: BLE001 - whatever stopped it, the stage failed; the others go on
            outcome = StageOutcome.failed(f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}")
        finally:
            submitted.set()
        ended.put((stage, outcome))

    def launch(stage):
        submitted = threading.Event()
        # daemon: a Ctrl-C of the driver ends the run at once (ray.shutdown stops the stages' work)
        threading.Thread(target=drive, args=(stage, submitted), name=f"stage {stage}", daemon=True).start()
        submitted.wait()
        return stage

    def finished(_stages):
        results = dict([ended.get()])
        while not ended.empty():
            stage, outcome = ended.get()
            results[stage] = outcome
        return results

    return _drive(exp, out, graph, launch, finished, log, priority)


def run_in_order(exp: Experiment, out: RunDir, data_ref, num_groups: int, streaming: bool, log,
                 fail_once_at: Optional[tuple] = None, **task_options) -> dict:
    """Every stage one after another, each on its own (one-worker) executor: the sequential mode
    when no stage needs a fit. `launch` runs the stage, so one runs at a time. Returns {stage:
    record}; raises as `run_concurrent` does."""
    graph = stage_graph(exp, num_groups)
    outcomes = {}

    def launch(stage):
        outcomes[stage] = run_one_stage(exp, out, data_ref, stage, graph[stage], streaming, fail_once_at, log,
                                        **task_options)
        return stage

    return _drive(exp, out, graph, launch, lambda handles: {h: outcomes.pop(h) for h in handles[:1]}, log)


__all__ = ["FIT", "TASK", "fit_stages", "task_stages", "run_one_stage", "run_concurrent", "run_in_order"]
