"""The Ray backend: ONE Ray Train `fit` per `raydistill run`.

The worker loop runs every stage of the run in order — each teacher that must be trained, then
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
and `placement.json` (nodes of workers and teacher actors).
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
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from raydistill.config import Experiment
from raydistill.data import ImageSet
from raydistill.distill.curriculum import teachers_needed
from raydistill.distill.engine import NonFiniteLossError, TrainContext, TrainState, train_plan
from raydistill.runner import (RunResult, finish_run, method_stage, start_run, teacher_stage, write_metrics)
from raydistill.distributed.consistency import plain_model, same_teacher_on_every_rank
from raydistill.teachers import (FrozenTeacher, LocalTeachers, check_teacher_checkpoints, classes_of, load_teacher,
                                 saved_teachers)
from raydistill.workspace import PreparedData, with_absolute_paths

STATE_FILE = "state.pt"
ABORTED_FILE = "aborted.json"   # written by rank 0 when a non-finite loss stops the run
# For a Ray instance this process starts on one machine: no token auth (Ray 2.60 enables it by
# itself), and no preemption watcher (it polls for cloud node preemption, meaningless on one
# machine, and its actor logs a core_worker error line into every run's output).
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class RunInterrupted(RuntimeError):
    """The Ray Train run failed more often than `ray.max_failures`; re-running resumes it."""


# ---- stages and progress (no Ray) ----------------------------------------------------------

def run_stages(exp: Experiment, num_groups: int) -> list[str]:
    """Stage names in run order: teachers first, then every method."""
    return ([f"teacher:{k}" for k in teachers_needed(exp.methods, num_groups)]
            + [f"method:{m}" for m in exp.methods])


def empty_progress() -> dict:
    return {"seq": 0, "stage": None, "train_state": None, "elapsed": 0.0, "completed": {}}


def latest_progress(checkpoint, storage: Path) -> dict:
    """The most advanced state among Ray Train's latest checkpoint and every checkpoint directory
    in the storage folder. A checkpoint is persisted (SYNC upload) before `report` returns, but
    Ray registers it a moment later; a worker killed in between would otherwise redo that epoch."""
    candidates = []
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            candidates.append(Path(d) / STATE_FILE)
            best = _load_state(candidates[0])
    else:
        best = None
    for path in sorted(storage.glob(f"checkpoint_*/{STATE_FILE}")) if storage.is_dir() else []:
        state = _load_state(path)
        if state is not None and (best is None or state["seq"] > best["seq"]):
            best = state
    return best or empty_progress()


def _load_state(path: Path) -> Optional[dict]:
    try:
        return torch.load(path, weights_only=True)
    except Exception:   # a partial copy of a checkpoint whose worker died mid-upload
        return None


def result_from_progress(exp: Experiment, out: Path, completed: dict) -> RunResult:
    """The RunResult (same structure as the local backend's) of the completed stages."""
    result = RunResult(out)
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
    """numpy arrays (zero-copy reads from the object store) of the prepared data."""
    sets = {name: (s.images.numpy(), s.labels.numpy(), s.class_names)
            for name, s in (("train", data.train), ("val", data.val), ("test", data.test))}
    return {"sets": sets, "groups": data.groups, "mean": data.mean, "std": data.std}


def unpack_data(packed: dict) -> PreparedData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # read-only object-store buffers; never written
        sets = {name: ImageSet(torch.from_numpy(im), torch.from_numpy(lb), names)
                for name, (im, lb, names) in packed["sets"].items()}
    return PreparedData(sets["train"], sets["val"], sets["test"], packed["groups"], packed["mean"], packed["std"])


def check_cluster_address(exp: Experiment) -> None:
    """ray.address must answer before anything is loaded or started (ray.init would retry for minutes)."""
    from raydistill.config import ConfigError
    from raydistill.reachability import check_reachable
    if exp.ray.address:
        try:
            check_reachable(exp.ray.address, "ray.address", "is the cluster up (`ray start --head`, `ray up "
                            "cluster.yaml`) and its port open? Expected host:6379, ray://host:10001 or auto")
        except ConnectionError as err:
            raise ConfigError(str(err)) from None


def init_ray(exp: Experiment, num_teachers: int) -> bool:
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
    # the dashboard serves the State API that Ray Train's placement-group cleaner polls every second
    ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=True,
             runtime_env={"env_vars": dict(LOCAL_ENV)})
    return True


# ---- the driver ------------------------------------------------------------------------------

def run_distributed(exp: Experiment, progress: Optional[Callable[[str], None]] = print, *,
                    fail_once_at: Optional[tuple] = None, callbacks: Optional[list] = None) -> RunResult:
    """Run (or resume) an experiment with Ray Train. `fail_once_at=(stage, epoch)` kills rank 0
    right after that epoch's checkpoint, once per run directory (for tests of recovery).
    `callbacks`: Ray Train UserCallbacks for the run (Tune trials forward epoch reports with one)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log = progress or (lambda _msg: None)
    check_cluster_address(exp)
    exp.check_devices("cuda" if exp.ray.use_gpu else "cpu", "ray")
    exp = with_absolute_paths(exp)
    data, out = start_run(exp)
    # a resumed run reloads its teachers: they must still serve this run's classes with its architecture
    check_teacher_checkpoints(saved_teachers(out, len(data.groups)), data.groups, exp.teachers.arch)
    (out / ABORTED_FILE).unlink(missing_ok=True)   # from an earlier attempt
    num_teachers = len(teachers_needed(exp.methods, len(data.groups)))
    started_ray = init_ray(exp, num_teachers)
    try:
        r = exp.ray
        resources = {"CPU": exp.worker_cpus()}
        if r.use_gpu:
            resources["GPU"] = r.gpus_per_worker
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"exp": exp.to_dict(), "data": ray.put(pack_data(data)), "run_dir": str(out),
                               "storage": str((out / "ray" / "train").resolve()),
                               "fail_once_at": list(fail_once_at) if fail_once_at else None},
            scaling_config=ScalingConfig(num_workers=r.workers, use_gpu=r.use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name="train", storage_path=str((out / "ray").resolve()),
                                 failure_config=FailureConfig(max_failures=r.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 callbacks=callbacks,
                                 # Ray Train logs every report at INFO and, without a dashboard, warns
                                 # every second that the state API is unavailable
                                 logging_config=ray.LoggingConfig(log_level="ERROR"),
                                 worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}))
        log(f"ray: {r.workers} worker(s), teachers {r.teachers}, storage {out / 'ray'}")
        try:
            fit = trainer.fit()
        except ray.train.TrainingFailedError as err:
            raise RunInterrupted(f"training failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                                 f"re-run the same command to resume from the last epoch checkpoint "
                                 f"in {out / 'ray'}") from err
        if (out / ABORTED_FILE).is_file():
            error = json.loads((out / ABORTED_FILE).read_text())["error"]
            (out / ABORTED_FILE).unlink()
            raise NonFiniteLossError(f"{error}; the run stopped there. Completed stages and the last good "
                                     f"epoch checkpoint are kept in {out}")
        state = latest_progress(fit.checkpoint, out / "ray" / "train")
        return finish_run(exp, result_from_progress(exp, out, state["completed"]), log)
    finally:
        if started_ray:
            ray.shutdown()


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
    """Ray Train's per-worker entry point. A diverged run (non-finite loss, raised on every rank at the
    same step) ends the fit normally with an `aborted` report and no new checkpoint: a restart from
    the last checkpoint would only diverge again, and that checkpoint must stay the latest."""
    import ray.train
    try:
        _train_stages(config)
    except NonFiniteLossError as err:
        if ray.train.get_context().get_world_rank() == 0:   # Train V2 keeps only checkpointed metrics: use a file
            (Path(config["run_dir"]) / ABORTED_FILE).write_text(json.dumps({"error": str(err)}))


def _train_stages(config: dict) -> None:
    import ray
    import ray.train
    from ray.train import Checkpoint

    # Ray Train V2 logs every report at INFO through a logger that hangs off the worker's root
    # logger, past LoggingConfig's level: raise the root level, our progress lines are prints
    logging.getLogger().setLevel(logging.WARNING)
    exp = Experiment.from_dict(config["exp"])
    data = unpack_data(ray.get(config["data"]))
    out = Path(config["run_dir"])
    torch.set_num_threads(max(1, int(exp.worker_cpus())))
    ctx = _context(exp)
    writer = ctx.rank == 0
    log = print if writer else (lambda _msg: None)
    attempt = _broadcast(uuid.uuid4().hex[:8], ctx)

    progress = latest_progress(ray.train.get_checkpoint(), Path(config["storage"]))
    if progress["seq"]:
        log(f"resuming: {len(progress['completed'])} stage(s) done"
            + (f", {progress['stage']} at epoch {progress['train_state']['epoch']}" if progress["stage"] else ""))
    completed = progress["completed"]
    fail_once_at = tuple(config["fail_once_at"]) if config.get("fail_once_at") else None

    def report(stage: str, metrics: dict, state: Optional[TrainState], elapsed: float) -> None:
        ckpt = None
        with tempfile.TemporaryDirectory() as tmp:
            if writer:
                progress["seq"] += 1
                torch.save({"seq": progress["seq"], "stage": stage, "train_state": state.to_dict() if state else None,
                            "elapsed": elapsed, "completed": completed}, Path(tmp) / STATE_FILE)
                ckpt = Checkpoint.from_directory(tmp)
                if state is not None:
                    with open(out / "epochs.jsonl", "a") as f:
                        f.write(json.dumps({"stage": stage, "epoch": metrics["epoch"], "attempt": attempt,
                                            "rank0_pid": os.getpid()}) + "\n")
            scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
            ray.train.report({"stage": stage or "done", **scalars}, checkpoint=ckpt)
        if writer and fail_once_at is not None and state is not None \
                and (stage, metrics["epoch"]) == fail_once_at:
            marker = out / f".failed-once-{stage.replace(':', '-')}-{metrics['epoch']}"
            if not marker.exists():
                marker.touch()
                log(f"fail_once_at: killing rank 0 after {stage} epoch {metrics['epoch']}")
                os._exit(1)

    def stage_train(stage: str):
        resume = None
        offset = 0.0
        if progress["stage"] == stage and progress["train_state"] is not None:
            resume, offset = TrainState.from_dict(progress["train_state"]), progress["elapsed"]
        started = time.perf_counter()

        def on_epoch_end(metrics, make_state):
            report(stage, metrics, make_state(), offset + time.perf_counter() - started)

        def train(plan, train_set, val_set, test_set, client, settings, log=None):
            return train_plan(plan, train_set, val_set, test_set, client, settings, ctx, resume=resume,
                              on_epoch_end=on_epoch_end, progress=log)
        return train, offset

    def record(stage: str, value: dict) -> None:
        completed[stage] = value
        if writer:
            write_metrics(out, result_from_progress(exp, out, completed))

    # teachers: train the missing ones, load the rest from the run directory
    frozen = {}
    stages = run_stages(exp, len(data.groups))
    methods_left = [s for s in stages if s.startswith("method:") and s not in completed]
    for stage in (s for s in stages if s.startswith("teacher:")):
        key = stage.split(":", 1)[1]
        if stage in completed:
            if methods_left:
                frozen[key] = load_teacher(out / "teachers" / f"{key}.pt", classes_of(key, data.groups),
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
        client = _cache_client(exp, data, frozen, ctx, out, writer, log)
    elif needs_teachers and frozen:
        client, actors = _teacher_client(exp, frozen, ctx, attempt, out, writer)

    for stage in methods_left:
        method = stage.split(":", 1)[1]
        train, offset = stage_train(stage)
        history, summary = method_stage(exp, data, out, method, client, log, train, write=writer,
                                        wall_offset=offset)
        record(stage, {"history": history, "summary": summary})

    if actors:
        for actor in actors.values():
            ray.kill(actor)
    report(None, {}, None, 0.0)   # the final checkpoint: every stage completed


def _teacher_client(exp: Experiment, frozen: dict, ctx: TrainContext, attempt: str, out: Path, writer: bool):
    """LocalTeachers in every worker, or one TeacherActor per teacher started by rank 0."""
    import ray
    from raydistill.distributed.teacher_actors import ActorTeachers, start_teacher_actors, teacher_bytes

    node = ray.get_runtime_context().get_node_id()
    nodes = _gather(node, ctx)
    if exp.ray.teachers == "local":
        if writer:
            (out / "placement.json").write_text(json.dumps({"workers": nodes, "teachers": "local"}, indent=2))
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
        (out / "placement.json").write_text(json.dumps(placement, indent=2))
    _broadcast(None, ctx)   # barrier: the actors exist
    if not writer:
        actors = {k: ray.get_actor(prefix + k) for k in frozen}
    return ActorTeachers(actors), (actors if writer else None)


def _cache_client(exp: Experiment, data: PreparedData, frozen: dict, ctx: TrainContext, out: Path, writer: bool,
                  log):
    """Soft labels from the cache: rank 0 loads or builds it (Ray tasks when the cluster has room
    besides the Train workers, else in this worker), the other ranks read the directory rank 0
    names once it exists (a shared filesystem, as for the run directory)."""
    from raydistill.softlabels import cache_root, ensure_soft_label_cache, load_soft_label_cache
    cache = ensure_soft_label_cache(exp, data, frozen, root=cache_root(exp, out), log=log) if writer else None
    directory = _broadcast(str(cache.directory) if writer else None, ctx)   # also the barrier
    return (cache if writer else load_soft_label_cache(Path(directory))).client()
