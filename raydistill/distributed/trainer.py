"""The Ray driver of a run (`raydistill run`, `raydistill.run`): checks, a Ray instance, the data
in the object store, then the stage graph on the executors of `executors.py`:

  ray.stages sequential   stages one after another: each one-worker stage as a Ray task (no Ray
                          Train start-up); when some stage needs several workers, one Ray Train
                          fit for the whole graph (one start-up for the run)
  ray.stages concurrent   every stage on its own executor (task or fit), launched as soon as the
                          stages it needs are complete
  ray.stages auto         concurrent when the cluster has room for two stages' workers at once

After every epoch rank 0 writes a checkpoint (`state.pt`: the stage, the engine's `TrainState`,
and the records of completed stages) into its executor's store under `<run>/ray/`, so a failed
worker restarts from it (`ray.max_failures`) and re-running the same command resumes: completed
stages are skipped, an interrupted one continues at its most advanced epoch checkpoint in any
store (whichever executor wrote it), and every epoch appears exactly once in the metrics.
Teachers are served in each worker (`ray.teachers: local`) or by `TeacherActor`s.

Files are the same as the in-process executor's (`pipeline.local`); in addition the run directory
holds `ray/` (the checkpoint stores), `epochs.jsonl` or `epochs/<stage>.jsonl` (one line per
trained epoch, with the attempt) and `placement.json`. The run directory may be a storage URI:
workers write through pyarrow (`storage.RunDir`), and the driver forwards the storage settings of
its environment (`storage.storage_env`) to them.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.distill.engine import NonFiniteLossError
from raydistill.distributed.data_transfer import pack_data
from raydistill.distributed.driver_bar import DriverBar
from raydistill.distributed.errors import NON_FINITE_ADVICE, RunInterrupted, stages_error
from raydistill.distributed.executors import fit_stages, run_concurrent, run_in_order
from raydistill.pipeline.checkpoints import run_progress
from raydistill.pipeline.graph import choose_mode, needs_one_fit
from raydistill.pipeline.prepare import start_run, with_absolute_paths
from raydistill.pipeline.progress import interactive
from raydistill.pipeline.results import RunResult, finish_run, result_from_progress
from raydistill.storage import RunDir
from raydistill.teachers import check_teacher_checkpoints, saved_teachers

# For a Ray instance this process starts on one machine: no token auth (Ray 2.60 enables it by
# itself), and no preemption watcher (it polls for cloud node preemption, meaningless on one
# machine, and its actor logs a core_worker error line into every run's output).
LOCAL_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


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
                    fail_once_at: Optional[tuple] = None, callbacks: Optional[list] = None,
                    in_process: bool = False, on_report: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Run (or resume) an experiment on Ray (see the module's docstring for `ray.stages`).
    `fail_once_at=(stage, epoch)` kills rank 0 right after that epoch's checkpoint, once per run
    directory (for tests of recovery). `callbacks`: Ray Train UserCallbacks of a whole-graph fit.
    `in_process`: every stage runs in this process, one after another, instead of in a Ray task (a
    Tune trial that holds the worker's resources itself); `on_report` then sees every epoch report.
    A stage that needs a Ray Train fit is refused there (its workers would need resources this
    process does not hold, and its epochs would not reach `on_report`)."""
    import ray

    log = progress or (lambda _msg: None)
    check_cluster_address(exp)
    exp.check_devices("cuda" if exp.ray.use_gpu else "cpu", "ray")
    exp = with_absolute_paths(exp)
    data, out = start_run(exp, log)
    if in_process:
        check_in_process(exp, len(data.groups), data.streaming)
    # a resumed run reloads its teachers: they must still serve this run's classes with its architecture
    check_teacher_checkpoints(saved_teachers(out, len(data.groups)), data.groups, exp.teachers.arch)
    groups = len(data.groups)
    started_ray = init_ray(exp, len(teachers_needed(exp.methods, groups, exp.all_teacher_weights())), data.streaming)
    try:
        check_shared_output(exp, out)   # before any training
        data_ref = ray.put(pack_data(data))
        # in this process: what holds the resources is this process, so its stages run one at a time
        mode = "sequential" if in_process else choose_mode(exp, ray.cluster_resources().get("CPU", 0))
        one_fit = not in_process and mode == "sequential" and needs_one_fit(exp, groups, data.streaming)
        executor = "one Ray Train fit" if one_fit else "Ray Train fit per stage" if exp.ray.executor == "fit" \
            else "task per one-worker stage" + (" (in this process)" if in_process else "")
        log(f"ray: stages {mode}, {exp.ray.workers} worker(s), {executor}, teachers {exp.ray.teachers}, "
            f"storage {out.child('ray')}")
        if mode == "concurrent":   # no driver bar for several stages at once: their workers print plain lines
            completed = run_concurrent(exp, out, data_ref, data.groups, data.streaming, log,
                                       fail_once_at=fail_once_at)
        elif not one_fit:
            bar = DriverBar() if progress is not None and interactive() else None
            try:
                completed = run_in_order(exp, out, data_ref, groups, data.streaming, log, fail_once_at=fail_once_at,
                                         in_process=in_process, on_report=on_report,
                                         bar_queue=bar.queue if bar else None)
            finally:
                if bar is not None:
                    bar.close()
        else:
            completed = _run_one_fit(exp, out, data_ref, progress, log, fail_once_at, callbacks)
        return finish_run(exp, out, result_from_progress(exp, out, completed), log)
    finally:
        if started_ray:
            ray.shutdown()


def check_in_process(exp: Experiment, num_groups: int, streaming: bool) -> None:
    """An in-process run trains every stage here, as one worker: a stage that needs a Ray Train fit
    (several workers, streamed data, `ray.executor: fit`) is a ConfigError naming why, before Ray."""
    from raydistill.config import ConfigError
    from raydistill.pipeline.graph import FIT, stage_executor, stage_graph, stage_workers
    for stage in stage_graph(exp, num_groups):
        if stage_executor(exp, stage, streaming) == FIT:
            workers = stage_workers(exp, stage)
            why = ("streamed data (data.loader stream)" if streaming else f"ray.executor {exp.ray.executor}"
                   if exp.ray.executor != "auto" else
                   f"{'ray.teacher_workers' if stage.startswith('teacher:') else 'ray.workers'} {workers}")
            raise ConfigError(f"stage {stage} needs a Ray Train fit ({why}), which a run in this process "
                              f"(a one-worker Tune trial) cannot start; run it without in_process")


def _run_one_fit(exp: Experiment, out: RunDir, data_ref, progress, log, fail_once_at, callbacks) -> dict:
    """The whole graph as one Ray Train fit, its epochs drawn by the driver on a terminal."""
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
    return {**run_progress(out)[0], **state["completed"]}


__all__ = ["LOCAL_ENV", "NON_FINITE_ADVICE", "RunInterrupted", "init_ray", "run_distributed", "stages_error"]
