"""The in-process executor: every stage of the graph in this process, one worker, no Ray
(`raydistill run --local`, `raydistill.run(..., backend="local")`)."""
from __future__ import annotations

from typing import Callable, Optional

from raydistill.config import Experiment
from raydistill.pipeline.prepare import pick_device, start_run
from raydistill.pipeline.results import RunResult, finish_run, run_result, write_metrics
from raydistill.pipeline.stages import local_train, method_stage, prepare_teachers
from raydistill.teachers import LocalTeachers


def say(message: str) -> None:
    """Progress lines, flushed so they show up live through pipes and job logs."""
    print(message, flush=True)


def run(exp: Experiment, progress: Optional[Callable[[str], None]] = say) -> RunResult:
    """Run an experiment in this process; everything is validated before training starts."""
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
    result = run_result(out)
    teachers, result.teachers = prepare_teachers(exp, data, out, device, log)
    client = LocalTeachers(teachers)
    if exp.teachers.soft_labels == "cache" and teachers:
        from raydistill.softlabels import cache_root, ensure_soft_label_cache
        client = ensure_soft_label_cache(exp, data, teachers, root=cache_root(exp), log=log).client()
    train = local_train(device, exp, out, **exp.context_options())
    for method in exp.methods:
        history, result.methods[method] = method_stage(exp, data, out, method, client, log, train)
        result.history += history
        write_metrics(out, result)
    return finish_run(exp, out, result, log)
