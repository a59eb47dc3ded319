"""Teachers once per search: trained (or loaded) before any trial, saved under <search dir>/teachers.

Every trial gets `teachers.checkpoints` pointing at these files, so `pipeline.stages.teacher_stage` loads
instead of training. Each training event appends a line to `teachers/trained.jsonl`: that file is
the count of how often teachers were actually trained (a resumed search must add nothing).
"""
from __future__ import annotations

import json
import time
from typing import Callable, Sequence

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.storage import RunDir, absolute, join, storage_env

TRAINED_LOG = "trained.jsonl"


def teacher_paths(exp: Experiment, search_dir, methods: Sequence[str] = ("ed",)) -> dict:
    """{key: location} of the teachers `methods` need (the ed curriculum's, and the baselines'), inside
    the search directory (a local path, made absolute, or a URI)."""
    return {key: join(absolute(str(search_dir)), f"teachers/{key}.pt")
            for key in teachers_needed(list(methods), exp.num_groups())}


def training_events(search_dir) -> list:
    """One record per teacher actually trained for this search."""
    out, name = RunDir(search_dir), f"teachers/{TRAINED_LOG}"
    return [json.loads(line) for line in out.read_text(name).splitlines() if line.strip()] if out.is_file(name) else []


def prepare_search_teachers(exp: Experiment, search_dir, log: Callable[[str], None],
                            methods: Sequence[str] = ("ed",)) -> dict:
    """Train or load every missing teacher; reuse files already in the search directory. With Ray
    initialized, each missing teacher is its own Ray task (the stage graph's one-worker executor:
    the worker's CPUs, a GPU with `ray.use_gpu`), so independent teachers train at once where the
    cluster has room and a CPU-only head node trains none; the search directory must then be
    shared storage (a shared path or a URI). Without Ray they train one after another here."""
    import ray
    out = RunDir(absolute(str(search_dir)))
    paths = teacher_paths(exp, search_dir, methods)
    missing = [key for key in paths if not out.is_file(f"teachers/{key}.pt")]
    for key in paths:
        if key not in missing:
            log(f"teacher {key}: reusing {paths[key]}")
    if missing and ray.is_initialized():
        cpus = min(exp.worker_cpus(), ray.cluster_resources().get("CPU", 1.0))   # never more than there is
        task = ray.remote(num_cpus=cpus, num_gpus=1 if exp.ray.use_gpu else 0, max_retries=0,
                          runtime_env={"env_vars": storage_env()})(_train_missing)
        records = [r for rs in ray.get([task.remote(exp.to_dict(), out.location, [key]) for key in missing])
                   for r in rs]
    else:
        records = _train_missing(exp.to_dict(), out.location, missing, log) if missing else []
    for record in records:   # one writer of the log: the tasks return their records
        out.append_line(f"teachers/{TRAINED_LOG}", json.dumps(record))
    return paths


def _train_missing(exp_dict: dict, search_dir: str, keys: list, log: Callable[[str], None] = print) -> list:
    """Train or load `keys` into `<search_dir>/teachers/`; the records of those actually trained."""
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
    return records
