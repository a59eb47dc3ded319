"""`tune(space)`: validate the space, train teachers once, run the trials with Ray Tune, write results.

Order matters: the space and the data are checked before Ray starts; teachers are trained (or
loaded) before the Tuner starts; the Tuner restores itself when the search directory already holds
its state, so re-running the same command resumes an interrupted search.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Optional, Union

from raydistill.distributed.trainer import LOCAL_ENV as TRAIN_LOCAL_ENV
from raydistill.search.results import (BEST_FILE, SearchResult, best_row, export_best, format_best, table_frame, trial_rows,
                                       write_table)
from raydistill.search import searchers
from raydistill.search.baselines import baseline_failure, comparison, read_baselines, run_baselines
from raydistill.search.space import (BASELINES, SEARCHERS, SearchSpace, SpaceError, check_scheduler, check_searcher,
                                     load_space, space_fingerprint)
from raydistill.search.teachers import prepare_search_teachers, teacher_paths
from raydistill.pipeline.prepare import with_absolute_paths
from raydistill.search.trainable import (SCHEDULE_METRIC, TRIAL_CPU, curriculum_asha, curriculum_bohb_hyperband,
                                         name_by_candidate, name_by_creation, run_trial, trains_in_trial,
                                         trial_name, trial_resources)
from raydistill.search.pbt import GRADE_SHARES, check_one_budget, curriculum_pbt, initial_shares, resolve_values
from raydistill.search.schedules import copy_as_best, export_schedules
from raydistill.search.tracking import tune_callbacks
from raydistill.config import ConfigError
from raydistill.storage import RunDir, absolute, is_uri, join, storage_env
from raydistill.storage import located as storage_location

TUNER_DIR = "tuner"
SPACE_FILE = "space.json"   # the search's fingerprint, which a resume must match
# A trial that ends hands its process to the next trial of the same resources (Tune's function
# trainables reset in place): a new process imports torch and raydistill again, seconds per trial on a
# CPU machine, and PBT pauses and resumes its members at every decision.
REUSE_ACTORS = True
LOCAL_ENV = {**TRAIN_LOCAL_ENV, "RAY_CHDIR_TO_TRIAL_DIR": "0"}


def tune(space_or_path: Union[str, Path, SearchSpace], samples: Optional[int] = None,
         scheduler: Optional[str] = None, max_concurrent: Optional[int] = None, output: Optional[str] = None,
         top: int = 5, progress: Optional[Callable[[str], None]] = print, searcher: Optional[str] = None,
         baselines: Optional[list] = None) -> SearchResult:
    """Run (or resume) a curriculum search. Arguments left None come from the space file."""
    log = progress or (lambda _msg: None)
    space = load_space(space_or_path)
    if searcher and searcher != space.searcher:
        if searcher not in SEARCHERS:
            raise SpaceError(f"searcher: expected one of {list(SEARCHERS)}, got {searcher!r}")
        space.searcher = searcher
        space.scheduler = "hyperband" if searcher == "bohb" else (
            "asha" if space.scheduler == "hyperband" else space.scheduler)
        check_searcher(space)
    if baselines is not None:
        if not set(baselines) <= set(BASELINES):
            raise SpaceError(f"baselines: expected methods from {list(BASELINES)}, got {baselines!r}")
        space.baselines = list(baselines)
    space.samples = samples or space.samples
    scheduler = scheduler or space.scheduler
    check_scheduler(scheduler, space.searcher, "--scheduler")
    if scheduler == "pbt" and space.pbt is None:
        raise SpaceError(f"{space.source}: pbt: scheduler pbt needs the space's pbt block (its mutations)")
    space.scheduler = scheduler
    if max_concurrent is not None and max_concurrent < 1:
        raise SpaceError(f"max_concurrent: expected a positive integer, got {max_concurrent!r}")
    if output:
        space.output = output
    candidates = space.candidates()   # pre-drawn trials (random, grid) or the points (model-based)
    search_dir = space.search_dir
    out = search_storage(search_dir)   # an unusable path or URI fails here, before any data work
    base = shared_decoded_store(space.base, search_dir)

    from raydistill.pipeline.prepare import prepare_data
    data = prepare_data(base, log)   # data problems fail here, before teachers or Ray; decodes once
    if scheduler == "pbt":
        check_pbt_trials(space, candidates, base, data.streaming)
    fingerprint = _check_same_search(out, space_fingerprint(space, candidates), scheduler)
    trials = len(candidates) if not space.model_based else space.samples
    log(f"search {space.name}: {trials} trials, searcher {space.searcher}, scheduler {scheduler}, "
        f"directory {search_dir}")

    import ray
    started_ray = _init_ray(base)
    try:
        # trial resources first: a spec the cluster cannot place is refused before any teacher trains
        cpus_per_worker, concurrent, resources = _resources(base, max_concurrent or space.max_concurrent,
                                                            ray.cluster_resources(), data.streaming)
        # every teacher any trial may need (a searched teacher signal may need both kinds), and the baselines'
        weights = space.all_teacher_weights()
        teachers = prepare_search_teachers(base, search_dir, log, methods=[space.method, *space.baselines],
                                           all_teacher_weights=weights)
        ed_teachers = {k: p for k, p in teachers.items() if k in teacher_paths(base, search_dir, [space.method], weights)}
        trials_dir = join(out.location, "trials")
        if base.teachers.soft_labels == "cache":
            shared_soft_labels(base, data, ed_teachers, trials_dir, log)
        log(f"trials: {concurrent} at a time, {base.ray.workers} worker(s) x {cpus_per_worker} CPU each"
            + (f" + {base.ray.gpus_per_worker:g} GPU each" if base.ray.use_gpu else ""))
        out.write_text(SPACE_FILE, json.dumps(fingerprint, indent=1))   # what a resume must match
        results = _run_tuner(space, candidates, concurrent, out, {
            "base": with_absolute_paths(base).to_dict(), "dimensions": space.dimensions,
            "teachers": ed_teachers, "trials_dir": trials_dir, "cpus_per_worker": cpus_per_worker,
            "in_process": trains_in_trial(base, data.streaming),
            "storage_env": storage_env() if is_uri(out.location) else {},
            **({"pbt": {"interval": space.pbt.perturbation_interval, "total_epochs": base.total_epochs()}}
               if scheduler == "pbt" else {})},
            resources)
        # run alone, baselines (and the exported best) get the whole cores the trial's torch threads used
        alone_cpus = float(max(1, int(cpus_per_worker)))
        # the search's own results are written before the baselines run: a failing baseline loses none
        frame, best, best_path = _write_results(space, candidates, results, scheduler, trials, ed_teachers,
                                                search_dir, alone_cpus, top, log)
        baseline_results, baseline_error = {}, None
        try:
            baseline_results = run_baselines(space, teachers, search_dir, alone_cpus, log)
        except Exception as err:   # noqa: BLE001 - any failure of the baselines' run: the search stands
            baseline_error = baseline_failure(err, search_dir)
            log(baseline_error)
    finally:
        if started_ray:
            ray.shutdown()

    if baseline_results:
        log(comparison(best, baseline_results))
    return SearchResult(search_dir, frame, best, best_path, baseline_results, baseline_error)


def _write_results(space: SearchSpace, candidates: list, results: list, scheduler: str, trials: int,
                   ed_teachers: dict, search_dir, alone_cpus: float, top: int, log) -> tuple:
    """trials.parquet and (when every trial ended and one completed) best.yaml; the table logged.
    Returns (frame, best row, best.yaml)."""
    run_trials = _trials(space, candidates, results)
    rows = trial_rows(space, results, run_trials, scheduler)
    frame = table_frame(rows, space.dimensions)
    table_path = write_table(frame, search_dir)
    best = best_row(rows)
    best_path = None
    unfinished = [r["trial"] for r in rows if r["stop_reason"].startswith(("interrupted", "not run"))]
    unfinished += [None] * (trials - len(rows))   # a model-based search interrupted before creating them
    if unfinished:
        best = None   # a best of a partial search would not be the search's best
        log(f"search interrupted: {len(unfinished)} trial(s) unfinished; re-run the same command to resume")
    if best is not None:
        values = dict(run_trials)[int(best["trial"].split("-")[1])]
        # absolute paths: Ray Train workers load teacher checkpoints from their own working directory
        best_path = export_best(space, best, values, ed_teachers, search_dir, alone_cpus)
    if scheduler == "pbt":
        final = {trial_name(r["index"]): r["resolved"] for r in results}
        written = export_schedules(space, final, ed_teachers, search_dir, join(absolute(str(search_dir)), "trials"),
                                   alone_cpus)
        log(f"schedules: {len(written)} replayable ({search_dir}/schedules/)")
        if best is not None:
            best_path = copy_as_best(search_dir, best["trial"], BEST_FILE) or best_path
    log(f"\n{len(rows)} trials ({table_path}); best {min(top, len(rows))} by validation accuracy "
        f"(accuracies in %; test is reported, never used to choose):\n{format_best(frame, top)}")
    if best:
        log(f"best: {best['trial']} -> {best_path}")
    elif not unfinished:
        log("no trial completed its curriculum: nothing exported")
    return frame, best, best_path


def _trials(space: SearchSpace, candidates: list, results: list) -> list:
    """(index, values) of every trial: the pre-drawn candidates, or those the searcher created (or,
    under PBT, the values each trial ended with)."""
    if not space.model_based and space.scheduler != "pbt":
        return list(enumerate(candidates))
    return sorted(((r["index"], r["values"]) for r in results), key=lambda t: t[0])


def check_pbt_trials(space: SearchSpace, candidates: list, base, streaming: bool) -> None:
    """PBT's trials train in their own process (a checkpoint is placed where that run resumes) and
    share one epoch budget (a checkpoint is copied between them): a SpaceError naming the field."""
    if not trains_in_trial(base, streaming):
        raise SpaceError(f"{space.source}: scheduler: pbt needs one-worker trials that train in the trial's own "
                         f"process (ray.workers 1, data.loader memory); this base needs a Ray Train fit per trial")
    varying = check_one_budget(space, candidates)
    if varying:
        raise SpaceError(f"{space.source}: search.{varying}: under scheduler pbt every trial trains the same total "
                         f"epochs (trials copy each other's checkpoints); search the split of the budget instead")


def search_storage(search_dir) -> RunDir:
    """The search directory as a RunDir (absolute local path or URI), created; a SpaceError naming
    `output` when it cannot be."""
    try:
        out = RunDir(absolute(str(search_dir)))
        out.make()
    except (OSError, ConfigError) as err:
        raise SpaceError(f"output: cannot create the search directory {search_dir} ({err})") from None
    return out


def shared_decoded_store(base, search_dir):
    """`base` with `data.cache_dir` set (unless given) to one decoded-shard store in the search
    directory, so this process decodes once and every trial (output.dir = trials/) loads the shards
    (behind a URI: each node keeps a local mirror of the stored shards)."""
    if base.data.cache_dir is None:
        base.data.cache_dir = join(absolute(str(search_dir)), "decoded")
    return base


def shared_soft_labels(base, data, teacher_paths: dict, trials_dir, log) -> None:
    """One soft-label cache for all trials, built here before they start, where every trial's run
    looks for it (teachers.cache_dir, else <trials' output.dir>/softlabels): trials only load it,
    and never race to build the same cache."""
    from raydistill.softlabels import ensure_soft_label_cache
    from raydistill.teachers import load_teacher
    frozen = {key: load_teacher(path, **base.serving_options()) for key, path in teacher_paths.items()}
    root = absolute(base.teachers.cache_dir) if base.teachers.cache_dir else join(str(trials_dir), "softlabels")
    ensure_soft_label_cache(base, data, frozen, root=root, log=log)


def _check_same_search(out: RunDir, fingerprint: dict, scheduler: str) -> dict:
    """A resumed search must be the same search: same base, candidates and scheduler."""
    fingerprint = json.loads(json.dumps({**fingerprint, "scheduler": scheduler}))
    if out.is_file(SPACE_FILE):
        before = out.read_json(SPACE_FILE)
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
            raise SpaceError(f"search directory {out} holds a different search (changed: "
                             f"{', '.join(changed)}); resume with the same space and options, or use --output "
                             f"for a new search")
    return fingerprint


def _init_ray(base) -> bool:
    """Connect to ray.address or start a local instance (unless one is running). True if started here."""
    import ray
    os.environ.update(LOCAL_ENV)   # read by Tune in this process (no chdir into trial dirs)
    if ray.is_initialized():
        return False
    if base.ray.address:
        ray.init(address=base.ray.address, runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    else:
        # the dashboard serves the State API that Ray Train's placement-group cleaner polls
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=True,
                 runtime_env={"env_vars": dict(LOCAL_ENV)})
    return True


def _resources(base, max_concurrent: Optional[int], available: dict, streaming: bool = False) -> tuple:
    """(CPUs per worker, concurrent trials, what each trial reserves) on a cluster of `available`
    resources (ray.cluster_resources()) for trials on streamed data or not, such that every running trial's driver and workers fit at
    once: a trial whose workers cannot be placed would wait forever while holding its slot. A
    one-worker trial trains in its own process, which holds the worker's CPUs (and GPUs); a trial
    driving a Ray Train fit holds TRIAL_CPU, so on N cores its workers get slightly under
    N/concurrent (e.g. 0.99: Ray schedules the fraction, torch still runs one thread)."""
    cpus = float(available.get("CPU", 1))
    r = base.ray
    workers, per_worker = r.workers, r.cpus_per_worker
    actors = r.teacher_cpus * base.num_groups() if r.teachers == "actors" else 0.0   # per trial
    driver = 0.0 if trains_in_trial(base, streaming) else TRIAL_CPU
    concurrent = max_concurrent or max(1, int(cpus // (workers * (per_worker or 1) + actors)))
    if r.use_gpu:
        gpus, per_trial = float(available.get("GPU", 0)), workers * r.gpus_per_worker
        if gpus < per_trial and not r.address:   # a local instance never gains a GPU (a cluster may scale)
            raise SpaceError(f"ray.use_gpu: each trial needs {per_trial:g} GPU(s) ({workers} worker(s) x "
                             f"ray.gpus_per_worker {r.gpus_per_worker:g}), this machine's Ray instance has "
                             f"{gpus:g}; set ray.use_gpu: false or ray.gpus_per_worker lower")
        if not max_concurrent:
            concurrent = max(1, min(concurrent, int(gpus / per_trial + 1e-9)))
    if per_worker is None:
        per_worker = math.floor(100 * (cpus - concurrent * (driver + actors)) / (concurrent * workers)) / 100
    need = concurrent * (workers * per_worker + driver + actors)
    if per_worker <= 0 or need > cpus + 1e-9:
        raise SpaceError(f"max_concurrent: {concurrent} trials x ({workers} worker(s) x {per_worker} CPU + "
                         f"{driver} for the trial driver + {actors} for teacher actors) need {need:.2f} CPUs, the cluster has {cpus:g}; lower "
                         f"--max-concurrent (or ray.workers / ray.cpus_per_worker in the base experiment)")
    return per_worker, concurrent, trial_resources(base, per_worker, streaming)


def search_setup(space: SearchSpace, candidates: list, concurrent: int) -> tuple:
    """(param_space, TuneConfig) of a new search. Its metric, SCHEDULE_METRIC, is what Tune hands
    the scheduler and a model-based searcher (neither is built with a metric of its own), so both
    rank trials on every class, not on the classes each trial's grade has taught so far."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    if space.scheduler == "pbt":
        return pbt_setup(space, candidates)
    max_t = space.max_epochs()
    sched = {"asha": lambda: curriculum_asha(max_t, space.grace_period, space.reduction_factor),
             "hyperband": lambda: curriculum_bohb_hyperband(max_t, space.reduction_factor),
             "fifo": FIFOScheduler}[space.scheduler]()
    if space.model_based:
        return searchers.param_space(space.dimensions), tune.TuneConfig(
            metric=SCHEDULE_METRIC, mode="max", scheduler=sched, num_samples=space.samples,
            search_alg=searchers.search_algorithm(space, concurrent), trial_name_creator=name_by_creation,
            trial_dirname_creator=name_by_creation, reuse_actors=REUSE_ACTORS)
    param_space = {"candidate": tune.grid_search([{"index": i, "values": v} for i, v in enumerate(candidates)])}
    return param_space, tune.TuneConfig(metric=SCHEDULE_METRIC, mode="max", scheduler=sched, num_samples=1,
                                        max_concurrent_trials=concurrent, reuse_actors=REUSE_ACTORS)


def pbt_setup(space: SearchSpace, candidates: list) -> tuple:
    """(param_space, TuneConfig) of a PBT population: the candidates as a grid (with each trial's
    starting grade weights when the grade budget is mutated), trials named by their candidate.

    The whole population exists from the start: Tune's `max_concurrent_trials` would create a new
    member only when an earlier one finished (2 at a time, one after another: no population). How
    many train at once is set by what each trial reserves (sized by `_resources` for max_concurrent);
    the others wait PENDING or PAUSED, and PBT resumes the member that is furthest behind."""
    from ray import tune
    shares = space.pbt.dimension(GRADE_SHARES) is not None
    members = []
    for i, values in enumerate(candidates):
        values = dict(values)
        if shares:
            values[GRADE_SHARES] = initial_shares(space.experiment_for(values).grade_epochs())
        members.append({"index": i, "values": values})
    scheduler = curriculum_pbt(space.pbt, space.base.num_groups(), space.seed)
    return {"candidate": tune.grid_search(members)}, tune.TuneConfig(
        metric=SCHEDULE_METRIC, mode="max", scheduler=scheduler, num_samples=1,
        trial_name_creator=name_by_candidate, trial_dirname_creator=name_by_candidate, reuse_actors=REUSE_ACTORS)


def search_trainable(setup: dict, resources: dict):
    """`run_trial` as Tune's trainable: the search's setup bound, each trial reserving `resources`
    (trainable.trial_resources)."""
    from ray import tune
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), resources)


def _run_tuner(space: SearchSpace, candidates: list, concurrent: int, out: RunDir, setup: dict,
               resources: Optional[dict] = None) -> list:
    """Fit (or restore and finish) the Tuner, its state in <search dir>/tuner (through the search
    directory's pyarrow filesystem: a local disk or the URI's object store); returns one plain dict
    per trial: index, values, metrics of its last report, error, done."""
    from ray import tune

    trainable = search_trainable(setup, resources or {"cpu": TRIAL_CPU})
    storage_fs = out.storage_filesystem
    path = f"{out.root}/{TUNER_DIR}"
    if tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True,
                                   storage_filesystem=storage_fs)
    else:
        param_space, tune_config = search_setup(space, candidates, concurrent)
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=TUNER_DIR, storage_path=out.root,
                                                     storage_filesystem=storage_fs, verbose=1,
                                                     failure_config=tune.FailureConfig(max_failures=space.max_failures),
                                                     callbacks=tune_callbacks(space.base)))
    grid = tuner.fit()
    # Tune marks the last result of a stopped or finished trial `done` (public Result.metrics):
    # that tells an ASHA stop from an interrupted search (see results.trial_rows)
    out = []
    for result in grid:
        config = result.config or {}
        metrics = result.metrics or {}
        if space.scheduler == "pbt":   # an exploit copies the donor's candidate: the trial is its directory
            index, values = int(Path(result.path).name.split("-")[1]), config["candidate"]["values"]
        elif "candidate" in config:
            index, values = config["candidate"]["index"], config["candidate"]["values"]
        else:
            index, values = int(Path(result.path).name.split("-")[1]), searchers.decode(space.dimensions, config)
        resolved = resolve_values(values, space.base.total_epochs()) if space.scheduler == "pbt" else values
        out.append({"index": index, "values": {d.path: values[d.path] for d in space.dimensions}
                    if space.scheduler == "pbt" else values, "resolved": resolved, "metrics": metrics,
                    "error": result.error, "done": bool(metrics.get("done"))})
    return out


def load_search(search_dir) -> SearchResult:
    """A finished (or interrupted) search read back from its directory (a local path or a URI):
    trials.parquet and best.yaml."""
    import io
    import pandas as pd
    from raydistill.search.results import TABLE_FILE, located, table_rows
    search_dir = storage_location(str(search_dir))
    out = RunDir(search_dir)
    if not out.is_file(TABLE_FILE):
        raise SpaceError(f"{search_dir}: no {TABLE_FILE} (not a search directory, or the search has not "
                         f"written its results yet)")
    table = pd.read_parquet(io.BytesIO(out.read_bytes(TABLE_FILE)))
    rows = table_rows(table)
    has_best = out.is_file(BEST_FILE)
    return SearchResult(search_dir, table, best_row(rows) if has_best else None,
                        located(search_dir, BEST_FILE) if has_best else None, read_baselines(search_dir))
