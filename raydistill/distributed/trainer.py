"""The Ray backend: one Ray Train `fit` per `raydistill run` (`ray.stages: sequential`), or one
per stage, launched as the stage graph allows (`concurrent`, see `stages.py`).

The worker loop runs every stage of its fit in order — each teacher that must be trained, then
each method's plan — with DDP over the engine's `TrainContext` seam (gloo on CPU, nccl on GPU;
the engine shards batches by rank). After every epoch rank 0 reports a Ray Train checkpoint
(`state.pt`: the stage, the engine's `TrainState`, and the records of completed stages), so
  - `FailureConfig(max_failures)` restarts the workers from the latest checkpoint, and
  - re-running the same command resumes (Ray Train V2 restores a run with the same storage
    path and name): completed stages are skipped, the interrupted plan continues with
    `train_plan(resume=...)`, and every epoch appears exactly once in the metrics.
Teachers are served in each worker (`ray.teachers: local`) or by `TeacherActor`s that rank 0
starts once the teachers exist (`ray.teachers: actors`).

Files are the same as the local backend's (`raydistill.runner`); in addition the run directory
holds `ray/` (Ray Train storage), `epochs.jsonl` (one line per trained epoch, with the attempt)
and `placement.json` (nodes of workers and teacher actors). The run directory may be a storage
URI: Ray Train gets it as its storage, workers write through pyarrow (`storage.RunDir`), and the
driver forwards the storage settings of its environment (`storage.storage_env`) to the workers.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import uuid
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import torch

from raydistill.config import Experiment
from raydistill.data import ImageSet
from raydistill.data.stream import StreamSplit
from raydistill.distill.curriculum import teachers_needed
from raydistill.distill.engine import NonFiniteLossError, TrainContext, TrainState, train_plan
from raydistill.runner import (RunResult, epoch_watchers, finish_run, method_stage, run_result, start_run, teacher_stage,
                               write_metrics)
from raydistill.distributed.consistency import plain_model, same_teacher_on_every_rank
from raydistill.distributed.driver_bar import DriverBar
from raydistill.progress import interactive
from raydistill.storage import RunDir, join, storage_env
from raydistill.teachers import (FrozenTeacher, LocalTeachers, check_teacher_checkpoints, classes_of, load_teacher,
                                 saved_teachers)
from raydistill.workspace import PreparedData, with_absolute_paths

STATE_FILE = "state.pt"
# For a Ray instance this process starts on one machine: no token auth (Ray 2.60 enables it by
# itself), and no preemption watcher (it polls for cloud node preemption, meaningless on one
# machine, and its actor logs a core_worker error line into every run's output).
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class RunInterrupted(RuntimeError):
    """The Ray Train run failed more often than `ray.max_failures`; re-running resumes it.
    `reason`: what failed, without the advice; `outcomes`: with concurrent stages, each stage's
    `StageOutcome` (stages.py)."""

    def __init__(self, message: str, reason: str = "", outcomes: Optional[dict] = None):
        super().__init__(message)
        self.reason = reason or message
        self.outcomes = outcomes or {}


# what a stage whose loss went non-finite should change (re-running only repeats the divergence)
NON_FINITE_ADVICE = ("lower the learning rate (optimizer.lr for a method, teachers.lr for a teacher) or check its "
                     "inputs and teachers; re-running as it is diverges again")


# ---- stages and progress (no Ray) ----------------------------------------------------------

def run_stages(exp: Experiment, num_groups: int) -> list[str]:
    """Stage names in run order: teachers first, then every method."""
    from raydistill.distributed.stages import stage_graph
    return list(stage_graph(exp, num_groups))


def empty_progress() -> dict:
    """`aborted`: the error of a non-finite loss that stopped the run (the checkpoint then repeats
    the last good state, so the stop reaches the driver through storage, not a side file)."""
    return {"seq": 0, "stage": None, "train_state": None, "elapsed": 0.0, "completed": {}, "aborted": None}


def latest_progress(checkpoint, storage: RunDir) -> dict:
    """The most advanced state among Ray Train's latest checkpoint and every checkpoint directory
    in the storage folder. A checkpoint is persisted (SYNC upload) before `report` returns, but
    Ray registers it a moment later; a worker killed in between would otherwise redo that epoch."""
    best = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            best = _load_state(RunDir(d), STATE_FILE)
    for name in storage.listdir():
        if name.startswith("checkpoint_"):
            state = _load_state(storage, f"{name}/{STATE_FILE}")
            if state is not None and (best is None or state["seq"] > best["seq"]):
                best = state
    return {**empty_progress(), **(best or {})}


def _load_state(directory: RunDir, name: str) -> Optional[dict]:
    try:
        return directory.load_torch(name, weights_only=True)
    except Exception:   # a partial copy of a checkpoint whose worker died mid-upload
        return None


def result_from_progress(exp: Experiment, out: RunDir, completed: dict) -> RunResult:
    """The RunResult (same structure as the local backend's) of the completed stages."""
    result = run_result(out)
    for name, record in completed.items():
        kind, key = name.split(":", 1)
        if kind == "teacher":
            result.teachers[key] = record["info"]
    for method in exp.methods:
        record = completed.get(f"method:{method}")
        if record is not None:
            result.methods[method] = record["summary"]
            result.history += record["history"]
    return result


def pack_data(data: PreparedData) -> dict:
    """numpy arrays (zero-copy reads from the object store) of the prepared data; streamed splits
    travel as they are (indexes: their pixels come through the fit's datasets)."""
    sets = {name: s if data.streaming else (s.images.numpy(), s.labels.numpy(), s.class_names)
            for name, s in (("train", data.train), ("val", data.val), ("test", data.test))}
    return {"sets": sets, "groups": data.groups, "mean": data.mean, "std": data.std}


def unpack_data(packed: dict, ctx: Optional[TrainContext] = None) -> PreparedData:
    """The PreparedData of a worker; streamed splits are attached to the worker's collectives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only object-store buffers; never written
        sets = {name: s.attach(ctx.rank, ctx.world_size, lambda t: ctx.all_reduce_sum(t.to(ctx.device)).cpu())
                if isinstance(s, StreamSplit) else ImageSet(torch.from_numpy(s[0]), torch.from_numpy(s[1]), s[2])
                for name, s in packed["sets"].items()}
    return PreparedData(sets["train"], sets["val"], sets["test"], packed["groups"], packed["mean"], packed["std"])


def fit_datasets(packed: dict, workers: int) -> Optional[dict]:
    """With streamed data, the Ray Datasets of a fit of `workers` workers (padding depends on it):
    val and test (training passes are built by each worker). None for in-memory data."""
    sets = packed["sets"]
    if not isinstance(sets["train"], StreamSplit):
        return None
    from raydistill.data.stream import stream_datasets
    return stream_datasets(sets["val"], sets["test"], workers)


def check_cluster_address(exp: Experiment) -> None:
    """ray.address must answer before anything is loaded or started (ray.init would retry for minutes)."""
    from raydistill.config import ConfigError
    from raydistill.distributed.reachability import check_reachable
    if exp.ray.address:
        try:
            check_reachable(exp.ray.address, "ray.address", "is the cluster up (`ray start --head`, `ray up "
                            "cluster.yaml`) and its port open? Expected host:6379, ray://host:10001 or auto")
        except ConnectionError as err:
            raise ConfigError(str(err)) from None


def check_shared_output(exp: Experiment, out: RunDir) -> None:
    """On a cluster (`ray.address`), a local output.dir must be one every node that can hold
    workers sees (a shared mount): checked with a marker before any training, since a node that
    cannot see it fails only at its first checkpoint, with advice (resume) that cannot help."""
    from pyarrow import fs
    from raydistill.config import ConfigError
    from raydistill.distributed.reachability import nodes_not_seeing, worker_nodes
    if not exp.ray.address or not isinstance(out.fs, fs.LocalFileSystem):
        return   # a local instance is this machine alone; a URI is reached over the network
    missing = nodes_not_seeing(out.root, worker_nodes(exp.ray.use_gpu))
    if missing:
        names = ("node " if len(missing) == 1 else "nodes ") + ", ".join(
            f"{n['NodeManagerAddress']} (node id {n['NodeID']})" for n in missing)
        raise ConfigError(f"output.dir: {exp.output.dir} is a local directory that {names} of the cluster "
                          f"at {exp.ray.address} cannot see, and its workers write the run there; use a storage "
                          f"URI every node reaches (e.g. --output s3://bucket/runs) or a directory on a mount "
                          f"every node shares, at the same path on each")


def init_ray(exp: Experiment, num_teachers: int, streaming: bool = False) -> bool:
    """Connect to `ray.address`, or start a local instance. Returns True if this call started Ray."""
    import ray
    if ray.is_initialized():
        return False
    if exp.ray.address:
        ray.init(address=exp.ray.address)
        return True
    os.environ.update(LOCAL_ENV)
    r = exp.ray
    need = r.workers * exp.worker_cpus() + (r.teacher_cpus * num_teachers if r.teachers == "actors" else 0)
    if streaming:   # Ray Data's read/decode tasks need CPUs of their own besides the Train workers'
        need += os.cpu_count() or 1
    # the dashboard serves the State API that Ray Train's placement-group cleaner polls every second
    # address="local": a new instance even when `ray start` left a cluster on this machine (which a
    # bare ray.init() would join): without ray.address the run is this machine's alone
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=True,
             runtime_env={"env_vars": dict(LOCAL_ENV)})
    return True


# ---- the driver ------------------------------------------------------------------------------

def run_distributed(exp: Experiment, progress: Optional[Callable[[str], None]] = print, *,
                    fail_once_at: Optional[tuple] = None, callbacks: Optional[list] = None) -> RunResult:
    """Run (or resume) an experiment with Ray Train: one fit for the whole run (`ray.stages:
    sequential`) or one fit per stage (`concurrent`, see `stages.py`). `fail_once_at=(stage, epoch)`
    kills rank 0 right after that epoch's checkpoint, once per run directory (for tests of recovery).
    `callbacks`: Ray Train UserCallbacks for the run (Tune trials forward epoch reports with one)."""
    import ray
    from raydistill.distributed.stages import choose_mode

    log = progress or (lambda _msg: None)
    check_cluster_address(exp)
    exp.check_devices("cuda" if exp.ray.use_gpu else "cpu", "ray")
    exp = with_absolute_paths(exp)
    data, out = start_run(exp, log)
    # a resumed run reloads its teachers: they must still serve this run's classes with its architecture
    check_teacher_checkpoints(saved_teachers(out, len(data.groups)), data.groups, exp.teachers.arch)
    num_teachers = len(teachers_needed(exp.methods, len(data.groups)))
    started_ray = init_ray(exp, num_teachers, data.streaming)
    try:
        check_shared_output(exp, out)   # before any training
        data_ref = ray.put(pack_data(data))
        mode = choose_mode(exp, ray.cluster_resources().get("CPU", 0))
        log(f"ray: stages {mode}, {exp.ray.workers} worker(s), teachers {exp.ray.teachers}, "
            f"storage {out.child('ray')}")
        if mode == "concurrent":   # stages' fits run in Ray tasks: their workers print plain lines
            completed = _run_concurrent(exp, data, out, data_ref, log, fail_once_at=fail_once_at)
        else:
            bar = DriverBar() if progress is not None and interactive() else None
            try:
                state = fit_stages(exp, out, data_ref, "train", exp.ray.workers, fail_once_at=fail_once_at,
                                   callbacks=(callbacks or []) + ([bar.callback] if bar else []) or None,
                                   driver_bar=bar is not None)
            finally:
                if bar is not None:
                    bar.close()
            if state["aborted"]:
                raise NonFiniteLossError(f"{state['aborted']}; the run stopped there: {NON_FINITE_ADVICE}. "
                                         f"Completed stages and the last good epoch checkpoint are kept in {out}")
            completed = state["completed"]
        return finish_run(exp, out, result_from_progress(exp, out, completed), log)
    finally:
        if started_ray:
            ray.shutdown()


def fit_stages(exp: Experiment, out: RunDir, data_ref, name: str, workers: int, *, stages: Optional[list] = None,
               ready: tuple = (), fail_once_at: Optional[tuple] = None, callbacks: Optional[list] = None,
               driver_bar: bool = False) -> dict:
    """One Ray Train run (storage `<run>/ray/<name>`) of `stages` (None: every stage), `ready`: teacher
    stages completed by other fits. Returns its final progress (`latest_progress`). `driver_bar`: the
    driver draws the epochs (`DriverBar`), so workers print no per-epoch lines."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = exp.ray
    resources = {"CPU": exp.worker_cpus()}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker
    ray_storage = out.child("ray")
    datasets = fit_datasets(ray.get(data_ref), workers)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"exp": exp.to_dict(), "data": data_ref, "run_dir": out.location,
                           "storage": join(ray_storage.location, name), "stages": stages, "ready": list(ready),
                           "fail_once_at": list(fail_once_at) if fail_once_at else None,
                           "driver_bar": driver_bar},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        datasets=datasets,
        # a URI: Ray Train writes its checkpoints through the same pyarrow filesystem, no local staging
        run_config=RunConfig(name=name, storage_path=ray_storage.root,
                             storage_filesystem=ray_storage.fs if ray_storage.local_path is None else None,
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


def _fit_one_stage(exp_dict: dict, data_box: list, location: str, stage: str, ready: list,
                   fail_once_at: Optional[tuple] = None):
    """A stage driver (a Ray task with no CPU): one fit of `stage`. Returns its StageOutcome: the
    type says how it ended (a non-finite loss is the checkpoint's `aborted`, never a text match)."""
    from raydistill.distributed.stages import StageOutcome, stage_workers, storage_name
    exp = Experiment.from_dict(exp_dict)
    try:
        state = fit_stages(exp, RunDir(location), data_box[0], storage_name(stage), stage_workers(exp, stage),
                           stages=[stage], ready=ready,
                           fail_once_at=fail_once_at if fail_once_at and fail_once_at[0] == stage else None)
    except RunInterrupted as err:
        return StageOutcome.failed(err.reason)
    if state["aborted"]:
        return StageOutcome.non_finite(state["aborted"])
    return StageOutcome.ok({stage: state["completed"][stage]})


def _run_concurrent(exp: Experiment, data: PreparedData, out: RunDir, data_ref, log,
                    fail_once_at: Optional[tuple] = None) -> dict:
    """Every stage as its own fit, each launched as soon as its teachers exist; the metrics file is
    rewritten by the driver whenever a stage completes. Returns {stage: record}."""
    import ray
    from raydistill.distributed.stages import OK, StagesFailed, run_graph, stage_graph, storage_name

    graph = stage_graph(exp, len(data.groups))
    done = {}
    for stage in graph:   # completed by an earlier invocation: its storage holds the record
        state = latest_progress(None, out.child("ray").child(storage_name(stage)))
        if stage in state["completed"]:
            done[stage] = state["completed"][stage]
    driver = ray.remote(num_cpus=0, max_retries=0, runtime_env={"env_vars": storage_env()})(_fit_one_stage)

    def launch(stage):
        return driver.remote(exp.to_dict(), [data_ref], out.location, stage, graph[stage], fail_once_at)

    def wait(refs):
        ready, _ = ray.wait(refs, num_returns=1)
        results = {ref: ray.get(ref) for ref in ready}
        write_metrics(out, result_from_progress(exp, out, {**done, **{k: v for o in results.values()
                                                                       if o.status == OK
                                                                       for k, v in o.records.items()}}))
        return results

    try:
        return run_graph(graph, done, launch, wait, log)
    except StagesFailed as err:
        raise stages_error(err.outcomes, out) from None


def stages_error(outcomes: dict, out: RunDir) -> Exception:
    """The error of concurrent stages that did not all complete: one line per stage with its own
    advice (a diverged stage: change the learning rate; an interrupted one: re-run to resume it).
    NonFiniteLossError only when every failed stage diverged, else RunInterrupted (re-running
    helps the others); both carry `outcomes`."""
    from raydistill.distributed.stages import FAILED, NON_FINITE, NOT_RUN, storage_name
    lines = []
    for stage, o in outcomes.items():
        if o.status == NON_FINITE:
            lines.append(f"{stage}: {o.message}; {NON_FINITE_ADVICE}")
        elif o.status == FAILED:
            lines.append(f"{stage}: failed ({o.message}); re-run the same command to resume it from its last "
                         f"epoch checkpoint in {out.child('ray').child(storage_name(stage))}")
        elif o.status == NOT_RUN:
            lines.append(f"{stage}: not run (needs {o.message})")
    message = ("stages did not complete:\n  " + "\n  ".join(lines)
               + f"\ncompleted stages are kept in {out}")
    if any(o.status == FAILED for o in outcomes.values()):
        return RunInterrupted(message, reason="; ".join(lines), outcomes=outcomes)
    err = NonFiniteLossError(message)
    err.outcomes = outcomes
    return err


# ---- the worker loop -------------------------------------------------------------------------

def _context(exp: Experiment):
    import ray.train
    import ray.train.torch
    from raydistill.distributed.consistency import ddp_context

    tc = ray.train.get_context()
    device = ray.train.torch.get_device() if exp.ray.use_gpu else torch.device("cpu")
    return ddp_context(device, tc.get_world_rank(), tc.get_world_size(), exp.sync_batchnorm(),
                       **exp.context_options())


def _broadcast(obj, ctx: TrainContext):
    if ctx.world_size == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj, ctx: TrainContext) -> list:
    if ctx.world_size == 1:
        return [obj]
    import torch.distributed as dist
    box = [None] * ctx.world_size
    dist.all_gather_object(box, obj)
    return box


def train_loop(config: dict) -> None:
    """Ray Train's per-worker entry point (Train V2 keeps only checkpointed metrics, so everything
    the driver must learn travels in checkpoints)."""
    # Ray Train V2 logs every report at INFO through a logger that hangs off the worker's root
    # logger, past LoggingConfig's level: raise the root level, our progress lines are prints
    logging.getLogger().setLevel(logging.WARNING)
    _train_stages(config)


def _train_stages(config: dict) -> None:
    import ray
    import ray.train
    from ray.train import Checkpoint

    exp = Experiment.from_dict(config["exp"])
    out = RunDir(config["run_dir"])
    torch.set_num_threads(max(1, int(exp.worker_cpus())))
    ctx = _context(exp)
    data = unpack_data(ray.get(config["data"]), ctx)
    writer = ctx.rank == 0
    log = print if writer else (lambda _msg: None)
    attempt = _broadcast(uuid.uuid4().hex[:8], ctx)

    progress = latest_progress(ray.train.get_checkpoint(), RunDir(config["storage"]))
    stages = config.get("stages")   # None: every stage in this fit (sequential mode)
    epochs_log = "epochs.jsonl" if stages is None else f"epochs/{'+'.join(stages).replace(':', '-')}.jsonl"
    progress["aborted"] = None   # a re-run after a stop tries again from the last good epoch
    if progress["seq"]:
        log(f"resuming: {len(progress['completed'])} stage(s) done"
            + (f", {progress['stage']} at epoch {progress['train_state']['epoch']}" if progress["stage"] else ""))
    completed = progress["completed"]
    fail_once_at = tuple(config["fail_once_at"]) if config.get("fail_once_at") else None

    def checkpoint(metrics: dict, **state) -> None:
        """Report `metrics` with a checkpoint of the progress (rank 0 writes it; `state` updates it)."""
        ckpt = None
        with tempfile.TemporaryDirectory() as tmp:
            if writer:
                progress.update(seq=progress["seq"] + 1, completed=completed, **state)
                torch.save(progress, Path(tmp) / STATE_FILE)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    def report(stage: str, metrics: dict, state: Optional[TrainState], elapsed: float,
               stage_started: Optional[float] = None) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        checkpoint({"stage": stage or "done", **scalars}, stage=stage,
                   train_state=state.to_dict() if state else None, elapsed=elapsed)
        if writer and state is not None:   # after the checkpoint is stored: the log lists no epoch trained twice
            out.append_line(epochs_log, json.dumps({"stage": stage, "epoch": metrics["epoch"], "attempt": attempt,
                                                    "rank0_pid": os.getpid(), "started": stage_started,
                                                    "time": time.time(),
                                                    "node": ray.get_runtime_context().get_node_id()}))
        if writer and fail_once_at is not None and state is not None \
                and (stage, metrics["epoch"]) == fail_once_at:
            marker = f".failed-once-{stage.replace(':', '-')}-{metrics['epoch']}"
            if not out.is_file(marker):
                out.write_text(marker, "")
                log(f"fail_once_at: killing rank 0 after {stage} epoch {metrics['epoch']}")
                os._exit(1)

    def stage_train(stage: str):
        resume = None
        offset = 0.0
        if progress["stage"] == stage and progress["train_state"] is not None:
            resume, offset = TrainState.from_dict(progress["train_state"]), progress["elapsed"]
        started, wall_started = time.perf_counter(), time.time()
        log(f"{stage}: {ctx.world_size} worker(s), rank 0 on node {ray.util.get_node_ip_address()}"
            + (f", resuming at epoch {resume.epoch}" if resume else ""))

        def train(plan, train_set, val_set, test_set, client, settings, log=None, **_):
            with ExitStack() as stack:
                # rank 0: live metrics; the bar, when the driver shows one, is drawn there (`DriverBar`)
                watch = epoch_watchers(stack, exp, out, stage, plan, log, bar=False) if writer else None

                def on_epoch_end(metrics, make_state):
                    if watch is not None:   # before the checkpoint: a crash may repeat an epoch there, never drop one
                        watch(metrics)
                    report(stage, {**metrics, "stage_epochs": plan.total_epochs, "stage_grades": len(plan.grades)},
                           make_state(), offset + time.perf_counter() - started, wall_started)
                return train_plan(plan, train_set, val_set, test_set, client, settings, ctx, resume=resume,
                                  on_epoch_end=on_epoch_end, progress=None if config.get("driver_bar") else log)
        return train, offset

    def record(stage: str, value: dict) -> None:
        completed[stage] = value
        if writer and stages is None:   # one fit per stage: the driver merges the metrics
            write_metrics(out, result_from_progress(exp, out, completed))

    try:
        _stages(exp, data, out, ctx, attempt, completed, stage_train, record, log, only=stages,
                ready=config.get("ready") or ())
    except NonFiniteLossError as err:
        # raised on every rank at the same step: end the fit normally, with a checkpoint that repeats
        # the last good state and carries the error (a restart would only diverge again)
        checkpoint({"stage": "aborted"}, aborted=str(err))
        return
    report(None, {}, None, 0.0)   # the final checkpoint: every stage completed


def _stages(exp: Experiment, data: PreparedData, out: RunDir, ctx: TrainContext, attempt: str, completed: dict,
            stage_train, record, log, only: Optional[list] = None, ready=()) -> None:
    """The stages of this fit (`only`, default all) not yet completed, in order: teachers (loaded
    from the run directory when done before, or by another fit: `ready`), then the methods."""
    import ray
    writer = ctx.rank == 0
    frozen = {}
    stages = run_stages(exp, len(data.groups))
    mine = set(stages if only is None else only)
    methods_left = [s for s in stages if s.startswith("method:") and s in mine and s not in completed]
    for stage in (s for s in stages if s.startswith("teacher:")):
        key = stage.split(":", 1)[1]
        if stage not in mine and stage not in ready:
            continue
        if stage in completed or stage in ready:
            if methods_left:
                frozen[key] = load_teacher(join(out.location, f"teachers/{key}.pt"), classes_of(key, data.groups),
                                           expected_arch=exp.teachers.arch, device=ctx.device,
                                           **exp.serving_options())
            continue
        train, _ = stage_train(stage)
        frozen[key], info = teacher_stage(exp, data, out, key, ctx.device, log, train=train, write=writer)
        frozen[key] = same_teacher_on_every_rank(frozen[key], ctx.world_size, lambda m: FrozenTeacher(
            plain_model(m), frozen[key].mean, frozen[key].std, device=ctx.device, **exp.serving_options()))
        record(stage, {"info": info})

    client, actors = None, None
    needs_teachers = bool(teachers_needed([s.split(":", 1)[1] for s in methods_left], len(data.groups)))
    if needs_teachers and frozen and exp.teachers.soft_labels == "cache":
        client = _cache_client(exp, data, frozen, ctx, writer, log)
    elif needs_teachers and frozen:
        client, actors = _teacher_client(exp, frozen, ctx, attempt, out, writer)

    for stage in methods_left:
        method = stage.split(":", 1)[1]
        train, offset = stage_train(stage)
        history, summary = method_stage(exp, data, out, method, client, log, train, write=writer,
                                        wall_offset=offset)
        record(stage, {"history": history, "summary": summary})

    for actor in (actors or {}).values():
        ray.kill(actor)


def _teacher_client(exp: Experiment, frozen: dict, ctx: TrainContext, attempt: str, out: RunDir, writer: bool):
    """LocalTeachers in every worker, or one TeacherActor per teacher started by rank 0."""
    import ray
    from raydistill.distributed.teacher_actors import ActorTeachers, start_teacher_actors, teacher_bytes

    node = ray.get_runtime_context().get_node_id()
    nodes = _gather(node, ctx)
    if exp.ray.teachers == "local":
        if writer:
            out.write_json("placement.json", {"workers": nodes, "teachers": "local"})
        return LocalTeachers(frozen), None
    prefix = f"raydistill-{attempt}-"
    actors = None
    if writer:
        r = exp.ray
        actors = start_teacher_actors({k: ray.put(teacher_bytes(t)) for k, t in frozen.items()},
                                      cpus=r.teacher_cpus, gpus=r.teacher_gpus,
                                      resources=r.teacher_resources, name_prefix=prefix,
                                      node_id=node if r.colocate_teachers else None,
                                      **exp.serving_options())
        placement = {"workers": nodes, "teachers": {k: ray.get(a.node_id.remote()) for k, a in actors.items()}}
        out.write_json("placement.json", placement)
    _broadcast(None, ctx)   # barrier: the actors exist
    if not writer:
        actors = {k: ray.get_actor(prefix + k) for k in frozen}
    return ActorTeachers(actors), (actors if writer else None)


def _cache_client(exp: Experiment, data: PreparedData, frozen: dict, ctx: TrainContext, writer: bool, log):
    """Soft labels from the cache: rank 0 loads or builds it (Ray tasks when the cluster has room
    besides the Train workers, else in this worker) and stores it in the cache root; the other
    ranks load the cache rank 0 names from there (a local copy of it when the root is a URI)."""
    from raydistill.softlabels import cache_root, ensure_soft_label_cache, load_soft_label_cache, local_cache_dir
    root = cache_root(exp)
    if writer and data.streaming:   # the cache is keyed and built on decoded pixels: the decode-once shards
        from raydistill.workspace import prepare_data
        data = prepare_data(exp.with_overrides(["data.loader=memory"]), log)
    cache = ensure_soft_label_cache(exp, data, frozen, root=root, log=log) if writer else None
    name = _broadcast(cache.directory.name if writer else None, ctx)   # also the barrier
    return (cache if writer else load_soft_label_cache(local_cache_dir(root, name))).client()
