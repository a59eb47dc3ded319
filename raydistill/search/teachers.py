"""Teachers once per search: trained (or loaded) before any trial, saved under <search dir>/teachers.

Every trial gets `teachers.checkpoints` pointing at these files, so `pipeline.stages.teacher_stage` loads
instead of training. Each training event appends a line to `teachers/trained.jsonl`: that file is
the count of how often teachers were actually trained (a resumed search must add nothing).
"""
from __future__ import annotations

import json
import time
from typing import Callable, Optional, Sequence

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.storage import RunDir, absolute, join, storage_env

TRAINED_LOG = "trained.jsonl"


def teacher_paths(exp: Experiment, search_dir, methods: Sequence[str] = ("ed",),
                  all_teacher_weights: Optional[Sequence[float]] = None) -> dict:
    """{key: location} of the teachers `methods` need (the trials' method's, and the baselines'), inside
    the search directory (a local path, made absolute, or a URI). `all_teacher_weights`: every ed
    teacher-signal weight a trial may use (`SearchSpace.all_teacher_weights`; default the experiment's)."""
    weights = list(all_teacher_weights) if all_teacher_weights is not None else exp.all_teacher_weights()
    return {key: join(absolute(str(search_dir)), f"teachers/{key}.pt")
            for key in teachers_needed(list(methods), exp.num_groups(), weights)}


def training_events(search_dir) -> list:
    """One record per teacher actually trained for this search."""
    out, name = RunDir(search_dir), f"teachers/{TRAINED_LOG}"
    return [json.loads(line) for line in out.read_text(name).splitlines() if line.strip()] if out.is_file(name) else []


def prepare_search_teachers(exp: Experiment, search_dir, log: Callable[[str], None],
                            methods: Sequence[str] = ("ed",),
                            all_teacher_weights: Optional[Sequence[float]] = None) -> dict:
    """Train or load every missing teacher; reuse files already in the search directory. With Ray
    initialized, each missing teacher is its own Ray task (the stage graph's one-worker executor:
    the worker's CPUs, a GPU with `ray.use_gpu`), so independent teachers train at once where the
    cluster has room and a CPU-only head node trains none; the search directory must then be
    shared storage (a shared path or a URI). Without Ray they train one after another here."""
    import ray
    out = RunDir(absolute(str(search_dir)))
    paths = teacher_paths(exp, search_dir, methods, all_teacher_weights)
    missing = [key for key in paths if not out.is_file(f"teachers/{key}.pt")]
    for key in paths:
        if key not in missing:
            log(f"teacher {key}: reusing {paths[key]}")
    if missing and ray.is_initialized():
        cpus = min(exp.worker_cpus(), ray.cluster_resources().get("CPU", 1.0))   # never more than there is
        task = ray.remote(num_cpus=cpus, num_gpus=exp.ray.gpus_per_worker if exp.ray.use_gpu else 0, max_retries=0,
                          runtime_env={"env_vars": storage_env()})(_train_missing)
        _collect([task.remote(exp.to_dict(), out.location, [key]) for key in missing], out)
    elif missing:   # one after another here, each record logged as its teacher is trained
        _train_missing(exp.to_dict(), out.location, missing, log, on_record=lambda r: _record(out, [r]))
    return paths


def _collect(refs: list, out: RunDir) -> None:
    """Each teacher task's records logged as soon as it ends, every task waited for: one failed
    teacher must not drop the records of those trained beside it (their files are kept and reused,
    so an unlogged one would never be counted). Then the first failure is raised as its own error
    (e.g. a TeacherError naming the checkpoint), not Ray's wrapper."""
    import ray
    failures, pending = [], list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            _record(out, ray.get(ready[0]))
        except ray.exceptions.RayTaskError as err:
            failures.append(err.cause if isinstance(err.cause, Exception) else err)
        except ray.exceptions.RayError as err:   # the worker died, the task was cancelled, ...
            failures.append(err)
    if failures:
        raise failures[0]


def _record(out: RunDir, records: list) -> None:
    for record in records:   # one writer of the log: the tasks return their records
        out.append_line(f"teachers/{TRAINED_LOG}", json.dumps(record))


def _train_missing(exp_dict: dict, search_dir: str, keys: list, log: Callable[[str], None] = print,
                   on_record: Optional[Callable[[dict], None]] = None) -> list:
    """Train or load `keys` into `<search_dir>/teachers/`; the records of those actually trained
    (each also handed to `on_record` as soon as it exists)."""
    from raydistill.pipeline.prepare import pick_device, prepare_data
    from raydistill.pipeline.stages import teacher_stage
    exp = Experiment.from_dict(exp_dict)
    out = RunDir(search_dir)
    data = prepare_data(exp)
    device = pick_device(exp)
    records = []
    for key in keys:
        started = time.time()
        _, info = teacher_stage(exp, data, out, key, device, log)   # saves out/teachers/<key>.pt
        if info["source"] == "trained":
            records.append({"key": key, "arch": info["arch"], "test_acc": info["test_acc"],
                            "seconds": round(time.time() - started, 2)})
            if on_record is not None:
                on_record(records[-1])
    return records
