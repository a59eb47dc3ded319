"""raydistill: Education Distillation (a knowledge-distillation curriculum) trained on Ray."""
from raydistill.config import ConfigError, Experiment
from raydistill.pipeline.report_files import load_run
from raydistill.pipeline.results import RunResult
from raydistill.search.results import SearchResult

__version__ = "0.1.0"


def run(experiment, backend: str = "ray", **kwargs):
    """Run an experiment (an Experiment, a YAML path or a shipped name) and return its RunResult.
    backend "ray" (default, like `raydistill run`): one Ray Train run, joining `ray.address` or a
    local instance, resumable; "local": everything in this process, no Ray."""
    exp = experiment if isinstance(experiment, Experiment) else Experiment.load(experiment)
    if backend == "local":
        from raydistill.pipeline.local import run as _run
        return _run(exp, **kwargs)
    if backend == "ray":
        from raydistill.distributed.trainer import run_distributed
        return run_distributed(exp, **kwargs)
    raise ConfigError(f"backend: expected 'ray' or 'local', got {backend!r}")


def submit(experiment, address=None, **kwargs):
    """Submit an experiment to a Ray cluster as a Ray Job; returns a JobHandle (see raydistill.distributed.jobs.submit)."""
    from raydistill.distributed.jobs import submit as _submit
    return _submit(experiment, address, **kwargs)


def tune(space_or_path, **kwargs):
    """Search curricula with Ray Tune from a space file; returns a SearchResult (see raydistill.search.tuner.tune)."""
    from raydistill.search.tuner import tune as _tune
    return _tune(space_or_path, **kwargs)


__all__ = ["ConfigError", "Experiment", "RunResult", "SearchResult", "load_run", "run", "submit", "tune", "__version__"]
