"""The `ray` section: how a run is placed on Ray (workers, GPUs, teacher actors, failures, stages)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from raydistill.config.errors import need

TEACHER_MODES = ("actors", "local")
STAGE_MODES = ("sequential", "concurrent", "auto")
EXECUTORS = ("auto", "task", "fit")


@dataclass
class RayConfig:
    """`ray`: how a run is placed on Ray: workers, GPUs, teacher actors, failures, stages."""
    workers: int = 1                    # Ray Train workers (DDP over gloo or nccl) of each student fit
    use_gpu: bool = False               # Ray Train workers on GPUs (ray.gpus_per_worker each)
    cpus_per_worker: Optional[float] = None  # None: share this machine's cores (local), 1 on a cluster
    address: Optional[str] = None       # join this cluster (ray://head:10001, auto) instead of starting a local one
    teachers: str = "local"             # local: teachers in each worker; actors: teachers served as Ray actors
    teacher_cpus: float = 1.0           # CPUs of each teacher actor (ray.teachers: actors)
    teacher_gpus: float = 0.0           # fractions share a GPU, e.g. 0.2: four teachers + the student on one
    colocate_teachers: bool = False     # teacher actors on rank 0's node (soft: elsewhere if it has no room)
    gpus_per_worker: float = 1.0        # with use_gpu; a fraction (one worker only) leaves room for teacher actors
    teacher_resources: dict = field(default_factory=dict)  # custom resources per teacher actor, e.g. {teacher_node: 1}
    max_failures: int = 0               # worker restarts from the last epoch checkpoint (per stage when concurrent)
    sync_batchnorm: Optional[bool] = None    # one set of BN statistics over workers; null: on when workers > 1
    stages: str = "sequential"          # sequential: stages one after another; concurrent: each when its teachers exist; auto: by room
    teacher_workers: int = 1            # workers of each teacher's stage (concurrent stages)
    executor: str = "auto"              # per stage: auto (task for one worker, fit for several), task, fit

    def check(self) -> None:
        """The section's own fields (the batch sizes against workers are Experiment's)."""
        r = self
        need(r.workers >= 1, "ray.workers", "a positive integer", r.workers)
        need(r.teachers in TEACHER_MODES, "ray.teachers", f"one of {list(TEACHER_MODES)}", r.teachers)
        need(r.cpus_per_worker is None or r.cpus_per_worker > 0, "ray.cpus_per_worker", "a positive number or null",
             r.cpus_per_worker)
        need(r.max_failures >= 0, "ray.max_failures", "a non-negative integer", r.max_failures)
        need(r.stages in STAGE_MODES, "ray.stages", f"one of {list(STAGE_MODES)}", r.stages)
        need(r.executor in EXECUTORS, "ray.executor", f"one of {list(EXECUTORS)}", r.executor)
        need(r.executor != "task" or max(r.workers, r.teacher_workers) == 1, "ray.executor",
             "auto or fit with more than one worker (a task is one worker; DDP needs a Ray Train fit)", r.executor)
        need(isinstance(r.teacher_workers, int) and r.teacher_workers >= 1, "ray.teacher_workers",
             "a positive integer", r.teacher_workers)
        need(r.teacher_cpus >= 0 and r.teacher_gpus >= 0, "ray.teacher_cpus/teacher_gpus", "non-negative numbers",
             (r.teacher_cpus, r.teacher_gpus))
        need(r.gpus_per_worker > 0, "ray.gpus_per_worker", "a positive number", r.gpus_per_worker)
        need(r.workers == 1 or r.gpus_per_worker >= 1, "ray.gpus_per_worker",
             "at least 1 with more than one worker (nccl cannot run two ranks on one GPU)", r.gpus_per_worker)
        need(isinstance(r.teacher_resources, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in r.teacher_resources.items()),
            "ray.teacher_resources", "a mapping of resource name to a non-negative amount", r.teacher_resources)
