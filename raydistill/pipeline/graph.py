"""A run as a small graph of stages (pure: no Ray), and how each stage is executed.

teachers (independent of each other) → methods (independent of each other, each needing its
teachers). Each stage runs on an executor chosen from its worker count (`stage_executor`: a Ray
task for one worker, a Ray Train fit for several) with its own checkpoint store
(`<run>/ray/stage-<kind>-<key>`); `ray.stages` says whether stages run one after another
(`sequential`: in one fit for the whole graph when a stage needs a fit) or each as soon as the
stages it needs are complete (`concurrent`). A re-run skips completed stages and resumes the
others from their most advanced checkpoint in any store (`pipeline.checkpoints.run_progress`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.teachers.frozen import classes_of


def stage_graph(exp: Experiment, num_groups: int) -> dict:
    """{stage: [stages it needs]} in run order: teachers first, then the methods."""
    weights = exp.all_teacher_weights()
    teachers = teachers_needed(exp.methods, num_groups, weights)
    graph = {f"teacher:{key}": [] for key in teachers}
    for method in exp.methods:
        graph[f"method:{method}"] = [f"teacher:{key}" for key in teachers_needed([method], num_groups, weights)]
    return graph


def run_stages(exp: Experiment, num_groups: int) -> list[str]:
    """Stage names in run order: teachers first, then every method."""
    return list(stage_graph(exp, num_groups))


def storage_name(stage: str) -> str:
    """Ray Train run name (folder under `<run>/ray`) of a stage's own fit."""
    return "stage-" + stage.replace(":", "-")


def stage_workers(exp: Experiment, stage: str) -> int:
    return exp.ray.teacher_workers if stage.startswith("teacher:") else exp.ray.workers


TASK, FIT = "task", "fit"


def stage_executor(exp: Experiment, stage: str, streaming: bool = False) -> str:
    """How one stage runs on Ray (`ray.executor`, `auto` resolved): a one-worker stage as a Ray task
    (no process group, no Ray Train start-up), several workers (DDP) or streamed data (Ray Data
    feeds Ray Train workers) as a Ray Train fit."""
    if streaming:
        return FIT   # the stream's val/test datasets are Ray Train's `datasets`
    if exp.ray.executor != "auto":
        return exp.ray.executor
    return FIT if stage_workers(exp, stage) > 1 else TASK


def needs_one_fit(exp: Experiment, num_groups: int, streaming: bool = False) -> bool:
    """Sequential mode runs the whole graph as one Ray Train fit (one start-up for the run) when some
    stage needs a fit; when none does, every stage is a task, one after another."""
    return any(stage_executor(exp, s, streaming) == FIT for s in stage_graph(exp, num_groups))


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


def stage_work(exp: Experiment, stage: str, groups: list, flops: Callable) -> float:
    """A stage's training work, in relative units: its epochs x the classes it trains on x
    `flops(arch, classes)` (one training image through its network). Images per class are taken
    as equal, and a method is counted as its complete student for every epoch (ED's fragments
    cost less): the figure only orders stages, it budgets nothing."""
    kind, key = stage.split(":", 1)
    if kind == "teacher":
        classes = len(classes_of(key, groups))
        return exp.teachers.epochs * classes * flops(exp.teachers.arch, classes)
    classes = sum(map(len, groups))
    return exp.total_epochs() * classes * flops(exp.student.arch, classes)


def critical_paths(graph: dict, work: dict) -> dict:
    """{stage: its work plus the most work of any chain of stages that need it}: the run cannot end
    sooner than this after the stage starts, so of the stages ready together the longest goes first
    (the all-class teacher before the group teachers, when kd waits on it)."""
    needed_by = {s: [t for t, needs in graph.items() if s in needs] for s in graph}
    paths: dict = {}

    def path(stage):
        if stage not in paths:
            paths[stage] = work[stage] + max((path(t) for t in needed_by[stage]), default=0.0)
        return paths[stage]

    return {s: path(s) for s in graph}


def run_graph(graph: dict, done: dict, launch: Callable, wait: Callable, log: Callable,
              priority: Optional[dict] = None) -> dict:
    """Run every stage of `graph` not in `done` ({stage: record}), each as soon as the stages it
    needs are done; of the stages ready at once, the highest `priority` first (default: graph
    order). `launch(stage)` starts it and returns a handle; `wait(handles)` blocks until at least
    one finishes and returns {handle: StageOutcome}. Returns `done`, updated; raises StagesFailed
    (each stage's outcome) once every stage that could run has ended."""
    pending = [s for s in graph if s not in done]
    running, outcomes = {}, {}
    while pending or running:
        ready = [s for s in pending if all(d in done for d in graph[s])]
        for stage in sorted(ready, key=lambda s: -priority[s]) if priority else ready:
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
