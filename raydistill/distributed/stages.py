"""A run as a small graph of stages, run as concurrent Ray Train fits (`ray.stages: concurrent`).

teachers (independent of each other) → methods (independent of each other, each needing its
teachers). In concurrent mode every stage is its own Ray Train run (storage `<run>/ray/<stage>`)
with its own scaling (`ray.teacher_workers` for a teacher, `ray.workers` for a method) and its own
FailureConfig, launched by a stage driver (a Ray task holding no CPU, like a Tune trial's driver)
as soon as the stages it needs are complete. A re-run skips stages whose storage holds their
completed record and resumes the others from their own checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


OK, NON_FINITE, FAILED, NOT_RUN = "ok", "non_finite", "failed", "not_run"


@dataclass(frozen=True)
class StageOutcome:
    """How one stage's fit ended, as a type rather than text: the driver reports each stage on its
    own, so one diverged stage neither turns the others' failures into a divergence nor drops
    their resume advice. `message`: the error (non_finite, failed), the stages it needed (not_run)."""
    status: str
    records: dict = field(default_factory=dict)
    message: str = ""

    @classmethod
    def ok(cls, records: dict) -> "StageOutcome":
        return cls(OK, dict(records))

    @classmethod
    def non_finite(cls, message: str) -> "StageOutcome":
        return cls(NON_FINITE, {}, message)

    @classmethod
    def failed(cls, message: str) -> "StageOutcome":
        return cls(FAILED, {}, message)


class StagesFailed(RuntimeError):
    """Some stages did not complete; `outcomes`: {stage: StageOutcome} of every stage this call ran
    or could not run (stages done before it are not listed)."""

    def __init__(self, outcomes: dict):
        self.outcomes = outcomes
        super().__init__("; ".join(f"{s}: {o.message}" if o.status != NOT_RUN
                                   else f"{s}: not run (needs a failed stage)"
                                   for s, o in outcomes.items() if o.status != OK))


def run_graph(graph: dict, done: dict, launch: Callable, wait: Callable, log: Callable) -> dict:
    """Run every stage of `graph` not in `done` ({stage: record}), each as soon as the stages it
    needs are done. `launch(stage)` starts it and returns a handle; `wait(handles)` blocks until at
    least one finishes and returns {handle: StageOutcome}. Returns `done`, updated; raises
    StagesFailed (each stage's outcome) once every stage that could run has ended."""
    pending = [s for s in graph if s not in done]
    running, outcomes = {}, {}
    while pending or running:
        for stage in [s for s in pending if all(d in done for d in graph[s])]:
            pending.remove(stage)
            running[launch(stage)] = stage
            log(f"stage {stage}: started")
        if not running:
            break   # what is left needs a stage that failed
        for handle, outcome in wait(list(running)).items():
            stage = running.pop(handle)
            outcomes[stage] = outcome
            if outcome.status == OK:
                done.update(outcome.records)
                log(f"stage {stage}: done")
            else:
                log(f"stage {stage}: {'non-finite loss' if outcome.status == NON_FINITE else 'failed'} "
                    f"({outcome.message})")
    if pending or any(o.status != OK for o in outcomes.values()):
        for stage in pending:
            outcomes[stage] = StageOutcome(NOT_RUN, {}, ", ".join(d for d in graph[stage] if d not in done))
        raise StagesFailed(outcomes)
    return done
