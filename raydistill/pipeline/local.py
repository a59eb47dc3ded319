"""The in-process executor: every stage of the graph in this process, one worker, no Ray
(`raydistill run --local`, `raydistill.run(..., backend="local")`).

Like the Ray executors it checkpoints every epoch into its own store (`<run>/ray/local`, the same
`state.pt` checkpoints) and resumes from the most advanced state of each stage in any store of the
run, so a killed `--local` run, or `--local` over an interrupted Ray run, skips completed stages and
continues the interrupted one. It trains with the torch threads a Ray worker of the experiment gets:
1 and 2 threads sum conv and BN gradients in different orders, enough to move a run's accuracy.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from raydistill.config import Experiment
from raydistill.distill.curriculum import teachers_needed
from raydistill.distill.engine import TrainState
from raydistill.pipeline.checkpoints import latest_progress, resume_point, save_progress
from raydistill.pipeline.prepare import pick_device, start_run
from raydistill.pipeline.results import RunResult, finish_run, run_result, write_metrics
from raydistill.pipeline.stages import local_train, method_stage, teacher_stage
from raydistill.storage import RunDir, join
from raydistill.teachers import LocalTeachers, check_teacher_checkpoints, classes_of, load_teacher, saved_teachers

LOCAL_STORE = "local"   # this executor's checkpoint store: <run>/ray/local


def say(message: str) -> None:
    """Progress lines, flushed so they show up live through pipes and job logs."""
    print(message, flush=True)


class LocalCheckpoints:
    """This process's progress, written to `<run>/ray/local` after every epoch and every completed
    stage (the progress dict a Ray worker writes), and what it resumes from: the records of stages
    completed in any store and each interrupted stage's most advanced epoch (`resume_point`)."""

    def __init__(self, out: RunDir):
        self.store = out.child("ray").child(LOCAL_STORE)
        self.progress = {**latest_progress(None, self.store), "aborted": None}
        self.completed, self.partial = resume_point(self.progress, out)
        self.stage, self.started, self.offset = None, 0.0, 0.0

    def begin(self, stage: str) -> float:
        """Start (or continue) `stage`; returns the seconds it trained before (its wall offset)."""
        self.stage, self.started = stage, time.perf_counter()
        self.offset = self.partial[stage][1] if stage in self.partial else 0.0
        return self.offset

    def resume(self, stage: str) -> Optional[TrainState]:
        return TrainState.from_dict(self.partial[stage][0]) if stage in self.partial else None

    def epoch(self, stage: str, state: TrainState) -> None:
        elapsed = self.offset + time.perf_counter() - self.started if stage == self.stage else 0.0
        self._save(stage=stage, train_state=state.to_dict(), elapsed=elapsed)

    def done(self, stage: str, record: dict) -> None:
        self.completed[stage] = record
        self.partial.pop(stage, None)
        self._save(stage=None, train_state=None, elapsed=0.0)

    def _save(self, **state) -> None:
        self.progress.update(seq=self.progress["seq"] + 1, completed=self.completed, **state)
        save_progress(self.store, self.progress)


def run(exp: Experiment, progress: Optional[Callable[[str], None]] = say) -> RunResult:
    """Run (or resume) an experiment in this process; everything is validated before training starts."""
    log = progress or (lambda _msg: None)
    device = pick_device(exp)
    exp.check_devices(device.type, "local")
    if exp.data.loader == "stream":
        from raydistill.config import ConfigError
        raise ConfigError("data.loader: stream needs the Ray backend (Ray Data pipelines feed Ray Train workers); "
                          "expected memory or auto with --backend local")
    if exp.data.loader == "auto":   # one process: nothing to stream to
        exp = exp.with_overrides(["data.loader=memory"])
    data, out = start_run(exp, log)
    # a resumed run reloads its teachers: they must still serve this run's classes with its architecture
    check_teacher_checkpoints(saved_teachers(out, len(data.groups)), data.groups, exp.teachers.arch)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(exp.worker_cpus())))   # what a Ray worker of this experiment trains with
    try:
        return _run_stages(exp, data, out, device, log)
    finally:
        torch.set_num_threads(threads)


def _run_stages(exp: Experiment, data, out: RunDir, device, log) -> RunResult:
    checkpoints = LocalCheckpoints(out)
    done = checkpoints.completed
    resumed = [f"{s} at epoch {state['epoch']}" for s, (state, _) in checkpoints.partial.items()]
    if done or resumed:
        log(f"resuming: {len(done)} stage(s) done" + "".join(f", {r}" for r in resumed))
    train = local_train(device, exp, out, checkpoints, **exp.context_options())
    result = run_result(out)
    methods_left = [m for m in exp.methods if f"method:{m}" not in done]
    teachers = {}
    for key in teachers_needed(exp.methods, len(data.groups), exp.all_teacher_weights()):
        stage = f"teacher:{key}"
        if stage in done:
            if key in teachers_needed(methods_left, len(data.groups), exp.all_teacher_weights()):
                teachers[key] = load_teacher(join(out.location, f"teachers/{key}.pt"), classes_of(key, data.groups),
                                             expected_arch=exp.teachers.arch, device=device,
                                             **exp.serving_options())
            result.teachers[key] = done[stage]["info"]
            continue
        checkpoints.begin(stage)
        teachers[key], result.teachers[key] = teacher_stage(exp, data, out, key, device, log, train=train)
        checkpoints.done(stage, {"info": result.teachers[key]})
    client = LocalTeachers(teachers)
    if exp.teachers.soft_labels == "cache" and teachers and methods_left:
        from raydistill.softlabels import cache_root, ensure_soft_label_cache
        client = ensure_soft_label_cache(exp, data, teachers, root=cache_root(exp), log=log).client()
    for method in exp.methods:
        stage = f"method:{method}"
        if stage in done:
            history, result.methods[method] = done[stage]["history"], done[stage]["summary"]
        else:
            offset = checkpoints.begin(stage)
            history, result.methods[method] = method_stage(exp, data, out, method, client, log, train,
                                                           wall_offset=offset)
            checkpoints.done(stage, {"history": history, "summary": result.methods[method]})
        result.history += history
        write_metrics(out, result)
    return finish_run(exp, out, result, log)
