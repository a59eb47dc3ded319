"""The stage loop one worker runs, whichever executor started it: a Ray Train worker (DDP, one
rank of a fit: `train_loop`) or a one-worker Ray task or this very process (`run_here`, no process
group, no Train start-up). The executors differ only in a small session: how a checkpoint is
reported and where the worker's rank comes from. Every executor writes the same `state.pt`
checkpoints (`pipeline.checkpoints`) into its store under `<run>/ray/`, and every one resumes from
the most advanced state of each stage in any store, so a run resumes under another executor.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import torch

from raydistill.config import Experiment
from raydistill.distill.engine import NonFiniteLossError, TrainContext, TrainState, train_plan
from raydistill.distill.curriculum import teachers_needed
from raydistill.distributed.consistency import ddp_context, plain_model, same_teacher_on_every_rank
from raydistill.distributed.data_transfer import unpack_data
from raydistill.distributed.driver_bar import forward_epoch
from raydistill.pipeline.checkpoints import (STATE_FILE, TASK_CHECKPOINTS_KEPT, TASK_PREFIX, latest_progress,
                                              resume_point)
from raydistill.pipeline.graph import run_stages
from raydistill.pipeline.prepare import PreparedData
from raydistill.pipeline.results import result_from_progress, write_metrics
from raydistill.pipeline.stages import epoch_watchers, method_stage, teacher_stage
from raydistill.storage import RunDir, join
from raydistill.teachers import FrozenTeacher, LocalTeachers, classes_of, load_teacher

class TrainSession:
    """A Ray Train worker: its rank in the fit's process group, checkpoints through `ray.train.report`."""

    def __init__(self, exp: Experiment):
        import ray.train
        import ray.train.torch
        tc = ray.train.get_context()
        device = ray.train.torch.get_device() if exp.ray.use_gpu else torch.device("cpu")
        self.ctx = ddp_context(device, tc.get_world_rank(), tc.get_world_size(), exp.sync_batchnorm(),
                               **exp.context_options())

    def restored(self):
        import ray.train
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, directory: Optional[str], seq: int) -> None:
        import ray.train
        from ray.train import Checkpoint
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None)


class SoloSession:
    """One worker with no process group (a Ray task, or this process): each checkpoint is copied into
    the stage's store as `checkpoint_task-<seq>/state.pt` (the last two kept); `on_report(metrics)`
    sees every report (a Tune trial forwards its epochs with it); `bar_queue`: the driver's progress
    bar (`driver_bar.DriverBar`)."""

    def __init__(self, exp: Experiment, store: RunDir, on_report: Optional[Callable[[dict], None]] = None,
                 bar_queue=None):
        device = torch.device("cuda") if exp.ray.use_gpu else torch.device("cpu")
        self.ctx = ddp_context(device, 0, 1, exp.sync_batchnorm(), **exp.context_options())
        self.store, self.on_report, self.bar_queue = store, on_report, bar_queue

    def restored(self):
        return None   # the store's own checkpoints are read by `latest_progress`

    def report(self, metrics: dict, directory: Optional[str], seq: int) -> None:
        if directory is not None:
            self.store.upload(directory, f"{TASK_PREFIX}{seq:09d}")
            mine = sorted(n for n in self.store.listdir() if n.startswith(TASK_PREFIX))
            for old in mine[:-TASK_CHECKPOINTS_KEPT]:
                self.store.delete(old)
        if self.on_report is not None:
            self.on_report(metrics)
        if self.bar_queue is not None:
            forward_epoch(self.bar_queue, metrics)


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else os.uname().nodename


def _node_ip() -> str:
    import ray
    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


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
    exp = Experiment.from_dict(config["exp"])
    torch.set_num_threads(max(1, int(exp.worker_cpus())))
    import ray
    run_worker(config, TrainSession(exp), ray.get(config["data"]))


def run_here(config: dict, packed: Optional[dict] = None,
             on_report: Optional[Callable[[dict], None]] = None) -> dict:
    """The stages of `config` as one worker in this process (the body of a one-worker Ray task, or
    of a Tune trial that trains in its own process). `packed`: the packed data (default: the
    object-store reference in config). Returns the store's final progress."""
    exp = Experiment.from_dict(config["exp"])
    torch.set_num_threads(max(1, int(exp.worker_cpus())))
    if packed is None:
        import ray
        packed = ray.get(config["data"])
    store = RunDir(config["storage"])
    run_worker(config, SoloSession(exp, store, on_report, config.get("bar_queue")), packed)
    return latest_progress(None, store)


def run_worker(config: dict, session, packed: dict) -> None:
    """Every stage of this worker's fit or task (`config["stages"]`, None: all) not yet completed in
    any store of the run, resuming an interrupted one at its most advanced epoch checkpoint."""
    exp = Experiment.from_dict(config["exp"])
    out = RunDir(config["run_dir"])
    ctx = session.ctx
    data = unpack_data(packed, ctx)
    writer = ctx.rank == 0
    log = print if writer else (lambda _msg: None)
    attempt = _broadcast(uuid.uuid4().hex[:8], ctx)

    progress = latest_progress(session.restored(), RunDir(config["storage"]))
    progress["aborted"] = None   # a re-run after a stop tries again from the last good epoch
    # every executor's stores, this one's as one of them: the most advanced epoch of a stage wins
    completed, partial = resume_point(progress, out)
    stages = config.get("stages")   # None: every stage in this fit (sequential mode)
    epochs_log = "epochs.jsonl" if stages is None else f"epochs/{'+'.join(stages).replace(':', '-')}.jsonl"
    # the stages done before this worker: a fresh run's earlier stages too, so no "resuming" here
    said = ([f"{len(completed)} earlier stage(s) done"] if completed else []) + [
        f"resuming {s} at epoch {state['epoch']}" for s, (state, _) in partial.items() if stages is None or s in stages]
    if said:
        log("; ".join(said))
    fail_once_at = tuple(config["fail_once_at"]) if config.get("fail_once_at") else None

    def checkpoint(metrics: dict, **state) -> None:
        """Report `metrics` with a checkpoint of the progress (rank 0 writes it; `state` updates it)."""
        with tempfile.TemporaryDirectory() as tmp:
            directory = None
            if writer:
                progress.update(seq=progress["seq"] + 1, completed=completed, **state)
                torch.save(progress, Path(tmp) / STATE_FILE)
                directory = tmp
            session.report(metrics, directory, progress["seq"])

    def report(stage: str, metrics: dict, state: Optional[TrainState], elapsed: float,
               stage_started: Optional[float] = None) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        checkpoint({"stage": stage or "done", **scalars}, stage=stage,
                   train_state=state.to_dict() if state else None, elapsed=elapsed)
        if writer and state is not None:   # after the checkpoint is stored: the log lists no epoch trained twice
            out.append_line(epochs_log, json.dumps({"stage": stage, "epoch": metrics["epoch"], "attempt": attempt,
                                                    "rank0_pid": os.getpid(), "started": stage_started,
                                                    "launched": config.get("launched"),
                                                    "driver_pid": config.get("driver_pid"),
                                                    "time": time.time(), "node": _node_id()}))
        if writer and fail_once_at is not None and state is not None \
                and (stage, metrics["epoch"]) == fail_once_at:
            marker = f".failed-once-{stage.replace(':', '-')}-{metrics['epoch']}"
            if not out.is_file(marker):
                out.write_text(marker, "")
                log(f"fail_once_at: killing rank 0 after {stage} epoch {metrics['epoch']}")
                os._exit(1)

    def stage_train(stage: str):
        resume, offset = None, 0.0
        if stage in partial:
            state, offset = partial[stage]
            resume = TrainState.from_dict(state)
        started, wall_started = time.perf_counter(), time.time()
        log(f"{stage}: {ctx.world_size} worker(s), rank 0 on node {_node_ip()}"
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
        partial.pop(stage, None)
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
    needs_teachers = bool(teachers_needed([s.split(":", 1)[1] for s in methods_left], len(data.groups),
                                          exp.all_teacher_weights()))
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

    node = _node_id()
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
        from raydistill.pipeline.prepare import prepare_data
        data = prepare_data(exp.with_overrides(["data.loader=memory"]), log)
    cache = ensure_soft_label_cache(exp, data, frozen, root=root, log=log) if writer else None
    name = _broadcast(cache.directory.name if writer else None, ctx)   # also the barrier
    return (cache if writer else load_soft_label_cache(local_cache_dir(root, name))).client()
