"""A run as a small graph of stages, run as concurrent Ray Train fits (`ray.stages: concurrent`).

teachers (independent of each other) → methods (independent of each other, each needing its
teachers). In concurrent mode every stage is its own Ray Train run (storage `<run>/ray/<stage>`)
with its own scaling (`ray.teacher_workers` for a teacher, `ray.workers` for a method) and its own
FailureConfig, launched by a stage driver (a Ray task holding no CPU, like a Tune trial's driver)
as soon as the stages it needs are complete. A re-run skips stages whose storage holds their
completed record and resumes the others from their own checkpoints.
"""
from __future__ import annotations

from typing import Callable

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed


def stage_graph(exp: Experiment, num_groups: int) -> dict:
    """{stage: [stages it needs]} in run order: teachers first, then the methods."""
    teachers = teachers_needed(exp.methods, num_groups)
    graph = {f"teacher:{key}": [] for key in teachers}
    for method in exp.methods:
        graph[f"method:{method}"] = [f"teacher:{key}" for key in teachers_needed([method], num_groups)]
    return graph


def storage_name(stage: str) -> str:
    """Ray Train run name (folder under `<run>/ray`) of a stage's own fit."""
    return "stage-" + stage.replace(":", "-")


def stage_workers(exp: Experiment, stage: str) -> int:
    return exp.ray.teacher_workers if stage.startswith("teacher:") else exp.ray.workers


def choose_mode(exp: Experiment, cluster_cpus: float) -> str:
    """`ray.stages`, with `auto` resolved: concurrent when the cluster has room for the workers of
    more than one stage at once, else sequential (one fit, no per-stage start-up cost)."""
    if exp.ray.stages != "auto":
        return exp.ray.stages
    widest = max(exp.ray.workers, exp.ray.teacher_workers) * exp.worker_cpus()
    return "concurrent" if cluster_cpus >= 2 * widest else "sequential"


def run_graph(graph: dict, done: dict, launch: Callable, wait: Callable, log: Callable) -> dict:
    """Run every stage of `graph` not in `done` ({stage: record}), each as soon as the stages it
    needs are done. `launch(stage)` starts it and returns a handle; `wait(handles)` blocks until at
    least one finishes and returns {handle: (stage records, error or None)}. Returns `done`, updated;
    raises RuntimeError naming the failed stages once every stage that could run has ended."""
    pending = [s for s in graph if s not in done]
    running, failed = {}, {}
    while pending or running:
        for stage in [s for s in pending if all(d in done for d in graph[s])]:
            pending.remove(stage)
            running[launch(stage)] = stage
            log(f"stage {stage}: started")
        if not running:
            break   # what is left needs a stage that failed
        for handle, (records, error) in wait(list(running)).items():
            stage = running.pop(handle)
            if error:
                failed[stage] = error
                log(f"stage {stage}: failed ({error})")
            else:
                done.update(records)
                log(f"stage {stage}: done")
    if failed or pending:
        raise RuntimeError("; ".join([f"{s}: {e}" for s, e in failed.items()]
                                     + [f"{s}: not run (needs a failed stage)" for s in pending]))
    return done
