"""Baselines beside a search: `scratch`, `kd` and `multi_teacher` run once, with the search's
teachers, at the search's longest trial budget, so its summary says where the best curriculum
stands against them (a curriculum that only wins against fewer epochs would not count).

The run is an ordinary `raydistill run` directory, <search dir>/baselines, read back by a resumed
search instead of being run again.
"""
from __future__ import annotations

from typing import Callable, Optional

from raydistill.config import Experiment
from raydistill.search.space import SearchSpace, apply_values
from raydistill.storage import RunDir, absolute, join
from raydistill.search.trainable import flow_yaml

BASELINES_DIR = "baselines"


def baseline_experiment(space: SearchSpace, teachers: dict, search_dir, cpus_per_worker: float) -> Experiment:
    """The base experiment at the longest trial budget, running the space's baselines."""
    exp = apply_values(space.base, space.longest_budget())
    return exp.with_overrides([
        f"methods={flow_yaml(space.baselines)}",
        f"teachers.checkpoints={flow_yaml(teachers)}",
        f"output.dir={flow_yaml(absolute(str(search_dir)))}",
        f"output.name={BASELINES_DIR}",
        f"ray.cpus_per_worker={cpus_per_worker}",
    ]).validate()


def run_baselines(space: SearchSpace, teachers: dict, search_dir, cpus_per_worker: float,
                  log: Callable[[str], None]) -> dict:
    """{method: {val_acc, test_acc, epochs}} of the space's baselines (run once, then read back)."""
    if not space.baselines:
        return {}
    done = read_baselines(search_dir)
    if set(space.baselines) <= set(done):
        log(f"baselines: reusing {join(str(search_dir), BASELINES_DIR)}")
        return {m: done[m] for m in space.baselines}
    from raydistill.distributed.trainer import run_distributed
    exp = baseline_experiment(space, teachers, search_dir, cpus_per_worker)
    log(f"baselines: {', '.join(space.baselines)} at {exp.total_epochs()} epochs with the search's teachers")
    run_distributed(exp, progress=log)
    return read_baselines(search_dir)


def baseline_failure(err: BaseException, search_dir) -> str:
    """One line for a baselines run that raised (interrupted, a non-finite loss, ...), with the run's
    own advice (resume, or change the learning rate): the search's own results are already written,
    and re-running the same command runs (resumes) only the baselines."""
    message = ""
    for line in filter(None, (part.strip() for part in str(err).splitlines())):   # "stages ...:\n  <stage>: ..."
        message += ((" " if message.endswith(":") else "; ") if message else "") + line
    message = message or type(err).__name__
    return (f"baselines: failed in {join(str(search_dir), BASELINES_DIR)} ({type(err).__name__}: {message[:600]}); "
            f"the search's results are written")


def read_baselines(search_dir) -> dict:
    out, name = RunDir(search_dir), f"{BASELINES_DIR}/summary.json"
    if not out.is_file(name):
        return {}
    methods = out.read_json(name)["methods"]
    return {m: {"val_acc": s["final_val_acc"], "test_acc": s["final_test_acc"], "epochs": s["epochs"]}
            for m, s in methods.items()}


def comparison(best: Optional[dict], baselines: dict) -> str:
    """Where the search's best trial stands (a curriculum, or a searched baseline): its last-epoch
    val/test accuracy and the gap to each baseline (positive: the best trial is ahead). Chosen on
    validation; test only reported."""
    if not baselines:
        return ""
    lines = ["best trial vs baselines (last epoch, %; + means the best trial is ahead):"]
    if best is not None:
        lines.append(f"  {'best (' + best['trial'] + ')':<22}{best['epochs_planned']:>4} epochs  "
                     f"val {100 * best['val_acc']:6.2f}  test {100 * best['test_acc']:6.2f}")
    for method, b in baselines.items():
        gap = ("" if best is None else f"   best - {method}: val {100 * (best['val_acc'] - b['val_acc']):+6.2f}"
               f"  test {100 * (best['test_acc'] - b['test_acc']):+6.2f}")
        lines.append(f"  {method:<22}{b['epochs']:>4} epochs  val {100 * b['val_acc']:6.2f}  "
                     f"test {100 * b['test_acc']:6.2f}{gap}")
    return "\n".join(lines)
