"""raydistill: Education Distillation (a knowledge-distillation curriculum) trained on Ray."""
from raydistill.config import ConfigError, Experiment

__version__ = "0.1.0"


def run(experiment, **kwargs):
    """Run an experiment (see raydistill.runner.run)."""
    from raydistill.runner import run as _run
    return _run(experiment, **kwargs)


def submit(experiment, address=None, **kwargs):
    """Submit an experiment to a Ray cluster as a Ray Job; returns a JobHandle (see raydistill.jobs.submit)."""
    from raydistill.jobs import submit as _submit
    return _submit(experiment, address, **kwargs)


__all__ = ["ConfigError", "Experiment", "run", "submit", "__version__"]
