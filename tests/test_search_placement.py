"""Where a search's trials train and what they reserve (issue 32, items 1 and 2): a one-worker trial
trains in its own process and reserves its worker's CPUs and, with `ray.use_gpu`, its GPUs; the
teacher stages of a trial only load the search's teachers, whatever `ray.teacher_workers` says, so a
trial never starts a Ray Train fit its own reservation has no room for."""
from __future__ import annotations

import pytest
from test_tune import tiny_space, tiny_teachers  # noqa: F401  (the tiny space's teachers, trained once)


GPU_TRIALS = ("ray.use_gpu=true", "ray.gpus_per_worker=0.5", "ray.cpus_per_worker=1")


def tiny_base(*overrides):
    from raydistill.search.space import space_from_dict
    return space_from_dict(tiny_space()).base.with_overrides(list(overrides))


def test_a_gpu_search_reserves_each_one_worker_trial_its_gpus():
    """What each trial reserves: a one-worker trial holds its worker's CPU and GPU share (half a GPU
    each: two trials at once on one GPU); a several-worker trial's driver holds TRIAL_CPU and its
    fit's workers the GPUs; no GPU on this machine's Ray instance is one line. No Ray needed."""
    from raydistill.search.space import SpaceError
    from raydistill.search.trainable import TRIAL_CPU
    from raydistill.search.tuner import _resources
    base = tiny_base(*GPU_TRIALS)
    assert _resources(base, None, {"CPU": 8.0, "GPU": 1.0}) == (1, 2, {"cpu": 1, "gpu": 0.5})

    several = base.with_overrides(["ray.workers=2", "ray.gpus_per_worker=1"])
    _, concurrent, resources = _resources(several, None, {"CPU": 8.0, "GPU": 4.0})
    assert (concurrent, resources) == (2, {"cpu": TRIAL_CPU})

    cpu_only = tiny_base("ray.cpus_per_worker=1")
    assert _resources(cpu_only, None, {"CPU": 4.0})[2] == {"cpu": 1}
    with pytest.raises(SpaceError, match=r"^ray\.use_gpu: each trial needs 0\.5 GPU\(s\) .* has 0;"):
        _resources(base, None, {"CPU": 8.0})


@pytest.mark.slow   # with_parameters puts the setup into the session's object store
def test_tune_gets_the_gpu_trials_resource_request(ray_session):
    """The trainable handed to the Tuner asks Tune for what `_resources` said, as Tune reads it."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.trainable.function_trainable import wrap_function
    from raydistill.search.tuner import _resources, search_trainable
    _, _, resources = _resources(tiny_base(*GPU_TRIALS), None, {"CPU": 8.0, "GPU": 1.0})
    request = wrap_function(search_trainable({}, resources)).default_resource_request({})
    assert request == PlacementGroupFactory([{"CPU": 1, "GPU": 0.5}])


def test_trials_of_a_base_with_several_teacher_workers_train_in_their_own_process(tmp_path):
    """`ray.teacher_workers: 2` in the base: the trial's teacher stages only load the search's
    teachers, so the trial is one-worker work in its own process, and its reservation is the
    worker's CPUs alone (no room for a driver is needed)."""
    from raydistill.pipeline.graph import TASK, stage_executor, stage_graph
    from raydistill.search.trainable import trains_in_trial, trial_experiment, trial_resources
    base = tiny_base("ray.teacher_workers=2", "ray.stages=concurrent")
    trial = trial_experiment(base.to_dict(), {}, {}, str(tmp_path), 0, 1.0)
    assert trains_in_trial(base) and trains_in_trial(trial)
    assert all(stage_executor(trial, s) == TASK for s in stage_graph(trial, trial.num_groups()))
    assert trial.ray.stages == "sequential" and trial_resources(base, 1.0) == {"cpu": 1.0}


def test_an_in_process_run_refuses_a_stage_that_needs_a_fit_before_ray(tmp_path):
    """`run_distributed(in_process=True)` never starts a Ray Train fit: one whose teacher stages need
    one (ray.teacher_workers 2) is a ConfigError naming the field, before Ray is started."""
    import ray
    from raydistill.config import ConfigError
    from raydistill.distributed.trainer import run_distributed
    from conftest import tiny_experiment
    exp = tiny_experiment(tmp_path, **{"ray.teacher_workers": 2, "ray.cpus_per_worker": 1})
    was_running = ray.is_initialized()
    with pytest.raises(ConfigError, match=r"stage teacher:group0 needs a Ray Train fit \(ray\.teacher_workers 2\)"):
        run_distributed(exp, progress=None, in_process=True, on_report=lambda _m: None)
    assert ray.is_initialized() == was_running


@pytest.mark.slow   # Ray (the session's instance), one tiny trial run in this process
def test_a_trial_with_several_teacher_workers_reports_its_epochs(ray_session, tmp_path, tiny_teachers):  # noqa: F811
    """The trial's own run, as `run_trial` starts it in the trial process: every ed epoch reaches
    `on_report` (which forwards it to Tune). Before, the teacher stages made it one Ray Train fit
    that reported nothing here (and, in a search, had no room to be placed)."""
    from raydistill.distributed.trainer import run_distributed
    from raydistill.search.trainable import trains_in_trial, trial_experiment
    base = tiny_base("ray.teacher_workers=2", "ray.cpus_per_worker=1")
    trial = trial_experiment(base.to_dict(), {}, tiny_teachers, str(tmp_path), 0, 1.0)
    assert trains_in_trial(trial)
    reports = []
    run_distributed(trial, progress=None, in_process=True, on_report=reports.append)
    ed = [r for r in reports if r.get("stage") == "method:ed" and "val_acc" in r]
    assert [r["epoch"] for r in ed] == [1, 2]
