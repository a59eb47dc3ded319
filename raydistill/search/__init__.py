"""Curriculum search with Ray Tune: search spaces as files (space), compiled to Tune's domains and
sampled by random/grid or Tune's optuna/hyperopt/bohb searchers (searchers), one Ray Train run per
trial (trainable), teachers trained once (teachers), baselines beside the search (baselines),
Tuner + resume (tuner), results table and best experiment (results). Importing this package does
not import Ray."""
from raydistill.search.space import SearchSpace, SpaceError, load_space, shipped_spaces


def tune(space_or_path, **kwargs):
    """Run (or resume) a curriculum search (see raydistill.search.tuner.tune)."""
    from raydistill.search.tuner import tune as _tune
    return _tune(space_or_path, **kwargs)


__all__ = ["SearchSpace", "SpaceError", "load_space", "shipped_spaces", "tune"]
