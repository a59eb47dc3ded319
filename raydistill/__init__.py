"""raydistill: Education Distillation (a knowledge-distillation curriculum) trained on Ray."""
from raydistill.config import ConfigError, Experiment

__version__ = "0.1.0"


def run(experiment, **kwargs):
    """Run an experiment (see raydistill.runner.run)."""
    from raydistill.runner import run as _run
    return _run(experiment, **kwargs)


__all__ = ["ConfigError", "Experiment", "run", "__version__"]
