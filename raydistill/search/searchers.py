"""Searched dimensions as Tune's own search spaces, and the Tune searcher that samples them.

Categorical dimensions (choice, valid_splits, permutations) compile to `tune.choice` over candidate
*indices*: Optuna's categorical distributions take only scalars, and an index keeps a split tuple or
a teacher order one categorical value for every searcher (so sampled split points are always one of
the valid increasing tuples and orders always permutations). Ranges compile to `tune.uniform`,
`tune.loguniform` and `tune.randint`. `decode` turns a Tune config back into {path: value}.

random and grid search pre-draw their trials (space.candidates) and run them as one grid; optuna,
hyperopt and bohb are Tune's integrations, wrapped in a ConcurrencyLimiter and seeded from the space.
"""
from __future__ import annotations


from raydistill.search.space import PACKAGES, SpaceError, check_installed


def categorical(dimension) -> bool:
    return dimension.discrete and dimension.kind != "randint"


def param_space(dimensions) -> dict:
    """{path: Tune domain} for every dimension."""
    from ray import tune
    space = {}
    for d in dimensions:
        if categorical(d):
            space[d.path] = tune.choice(list(range(len(d.values))))
        elif d.kind == "randint":
            space[d.path] = tune.randint(int(d.low), int(d.high) + 1)   # Tune's upper bound is exclusive
        elif d.kind == "loguniform":
            space[d.path] = tune.loguniform(d.low, d.high)
        else:
            space[d.path] = tune.uniform(d.low, d.high)
    return space


def decode(dimensions, config: dict) -> dict:
    """{path: value} of a Tune config sampled from `param_space`."""
    values = {}
    for d in dimensions:
        raw = config[d.path]
        if categorical(d):
            values[d.path] = d.values[int(raw)]
        elif d.kind == "randint":
            values[d.path] = int(raw)
        else:
            values[d.path] = float(raw)
    return values


def encode(dimensions, values: dict) -> dict:
    """The Tune config of {path: value} (a point to evaluate)."""
    return {d.path: (d.values.index(values[d.path]) if categorical(d) else values[d.path]) for d in dimensions}


def search_algorithm(space, concurrent: int):
    """Tune's searcher for a model-based space, seeded, with the space's points first."""
    from ray.tune.search import ConcurrencyLimiter

    points = [encode(space.dimensions, p) for p in space.points] or None
    if space.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        algorithm = OptunaSearch(points_to_evaluate=points, seed=space.seed)
    elif space.searcher == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch
        algorithm = HyperOptSearch(points_to_evaluate=points, random_state_seed=space.seed)
    elif space.searcher == "bohb":
        from ray.tune.search.bohb import TuneBOHB
        algorithm = TuneBOHB(points_to_evaluate=points, seed=space.seed)
    else:
        raise SpaceError(f"{space.source}: searcher: {space.searcher!r} is not model-based")
    return ConcurrencyLimiter(algorithm, max_concurrent=concurrent)


# checked with the space (space.py); named here too, beside the searchers that need them
__all__ = ["PACKAGES", "check_installed", "param_space", "search_algorithm", "decode"]
