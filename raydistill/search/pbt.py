"""`scheduler: pbt`: Population Based Training over ED curricula, on the driver's side.

A population of `samples` trials trains; every `perturbation_interval` epochs Tune's
PopulationBasedTraining lets a trial in the bottom `quantile_fraction` copy the checkpoint of one in
the top (exploit) and perturb the mutated fields (explore). Only fields a checkpoint does not fix may
be mutated (MUTABLE): the split points, order and head widths shape the grade models a checkpoint
holds, and data, teachers and methods are the search's. The trial side (restore in the donor's grade,
checkpoints, the schedule record) is `pbt_trial.py`; exported schedules are `schedules.py`.

How the fields travel: every mutated field is a value in the trial's `candidate.values` (a searched
dimension, or one added from the mutation's range so the initial population is drawn with the
space's seed); the remaining grade budget is `GRADE_SHARES`, one positive weight per grade, turned
into whole grade epochs by `resolve_values` (every grade keeps at least one epoch, so no grade
disappears mid-run). Tune's perturbation (x0.8 / x1.2, or a resample) is clipped back into each
field's range, so a perturbed trial is always a valid experiment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from raydistill.config import ConfigError

GRADE_SHARES = "curriculum.grade_fractions"   # the mutation of the remaining grade budget
# field -> what perturbing it mid-run means (the docs' list)
MUTABLE = {"optimizer.lr": "the learning-rate schedule's base from the next epoch on",
           "curriculum.alpha": "the CE weight of every grade from the next epoch on",
           "curriculum.temperature": "the KD temperature from the next epoch on",
           "curriculum.all_teacher_weight": "the all-class teacher's weight from the next epoch on",
           GRADE_SHARES: "the split of the epochs left among the current and later grades",
           "curriculum.patience": "plateau: epochs without improvement that end the current grade",
           "curriculum.min_delta": "plateau: the improvement that counts"}
PBT_KEYS = ("perturbation_interval", "quantile_fraction", "resample_probability", "synch", "mutations")
PLATEAU_FIELDS = ("curriculum.patience", "curriculum.min_delta")


@dataclass
class PBTSpec:
    """The `pbt:` block of a search space."""
    perturbation_interval: int = 2      # epochs between a trial's exploit/explore decisions
    quantile_fraction: float = 0.25     # bottom share that copies the top share
    resample_probability: float = 0.25  # explore: resample from the range instead of x0.8 / x1.2
    mutations: list = field(default_factory=list)   # Dimensions (path, kind, values or low/high)
    synch: bool = False                 # Tune's synchronous PBT: every member waits at each decision epoch

    def dimension(self, path: str):
        return next((d for d in self.mutations if d.path == path), None)

    def to_dict(self) -> dict:
        return {"perturbation_interval": self.perturbation_interval, "quantile_fraction": self.quantile_fraction,
                "resample_probability": self.resample_probability, "synch": self.synch,
                "mutations": {d.path: ({"choice": list(d.values)} if d.discrete else {d.kind: [d.low, d.high]})
                              for d in self.mutations}}


def parse_pbt(raw, source: str, base, dimension: Callable) -> PBTSpec:
    """The `pbt:` block, checked against the base experiment; `dimension(path, spec)` parses one
    mutation's range as a search dimension (space._dimension). Raises ConfigError naming the field."""
    where = f"{source}: pbt"
    if not isinstance(raw, dict) or set(raw) - set(PBT_KEYS) or not raw.get("mutations"):
        raise ConfigError(f"{where}: expected a mapping with mutations (and any of {list(PBT_KEYS[:4])}), got {raw!r}")
    interval = raw.get("perturbation_interval", 2)
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise ConfigError(f"{where}.perturbation_interval: expected a positive integer (epochs), got {interval!r}")
    quantile = raw.get("quantile_fraction", 0.25)
    if not isinstance(quantile, (int, float)) or isinstance(quantile, bool) or not 0 < quantile <= 0.5:
        raise ConfigError(f"{where}.quantile_fraction: expected a number in (0, 0.5], got {quantile!r}")
    resample = raw.get("resample_probability", 0.25)
    if not isinstance(resample, (int, float)) or isinstance(resample, bool) or not 0 <= resample <= 1:
        raise ConfigError(f"{where}.resample_probability: expected a number in [0, 1], got {resample!r}")
    synch = raw.get("synch", False)
    if not isinstance(synch, bool):
        raise ConfigError(f"{where}.synch: expected true or false, got {synch!r}")
    mutations = raw["mutations"]
    if not isinstance(mutations, dict):
        raise ConfigError(f"{where}.mutations: expected a mapping of dotted fields to ranges, got {mutations!r}")
    dims = []
    for path, spec in mutations.items():
        if path not in MUTABLE:
            raise ConfigError(f"{where}.mutations.{path}: cannot change mid-run (a trial that copies another's "
                              f"checkpoint keeps its grades' models, data, teachers and methods); PBT may perturb "
                              f"only {', '.join(MUTABLE)}")
        if path in PLATEAU_FIELDS and base.curriculum.switch != "plateau":
            raise ConfigError(f"{where}.mutations.{path}: perturbs a plateau setting, but the base experiment's "
                              f"curriculum.switch is {base.curriculum.switch!r}; set curriculum.switch: plateau")
        dims.append(_mutation(path, spec, where, base, dimension))
    return PBTSpec(interval, float(quantile), float(resample), dims, synch)


def _mutation(path: str, spec, where: str, base, dimension: Callable):
    """One mutation's range as a Dimension: ranges (uniform, loguniform) for the continuous fields,
    choice/randint for patience; shares strictly positive; an all-class-teacher weight strictly
    inside (0, 1), so every grade keeps both teacher signals whatever the perturbation."""
    kinds = ("uniform", "loguniform")
    if path == "curriculum.patience":
        kinds = ("choice", "randint")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
        raise ConfigError(f"{where}.mutations.{path}: expected a mapping with one of {list(kinds)}, got {spec!r}")
    if path == GRADE_SHARES:
        bounds = next(iter(spec.values()))
        ok = (isinstance(bounds, list) and len(bounds) == 2 and
              all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in bounds) and 0 < bounds[0] < bounds[1])
        if not ok:
            raise ConfigError(f"{where}.mutations.{path}: expected [low, high] with 0 < low < high (each grade's "
                              f"weight in the epochs left; every grade keeps at least one epoch), got {spec!r}")
        if base.total_epochs() < base.num_groups():
            raise ConfigError(f"{where}.mutations.{path}: {base.num_groups()} grades need at least as many "
                              f"epochs, the base trains {base.total_epochs()}")
    try:
        dim = dimension(path, spec) if path != GRADE_SHARES else _share_dimension(spec)
    except ConfigError as err:
        raise ConfigError(str(err).replace(": search.", ": pbt.mutations.", 1)) from None
    if path == "curriculum.all_teacher_weight" and not 0 < dim.low < dim.high < 1:
        raise ConfigError(f"{where}.mutations.{path}: expected a range strictly inside (0, 1) (every grade keeps "
                          f"both the group teachers and the all-class teacher, so a perturbation never changes "
                          f"which teachers a grade uses), got {spec!r}")
    return dim


# ---- values of a trial ----------------------------------------------------------------------

def initial_shares(grade_epochs: list) -> dict:
    """A trial's starting grade weights: its plan's epochs per grade ({"0": w0, ...}: Tune perturbs
    nested dicts key by key)."""
    total = sum(grade_epochs)
    return {str(i): max(e, 1) / total for i, e in enumerate(grade_epochs)}


def split_budget(total: int, weights: list, minimums: list) -> list:
    """`total` epochs over grades in proportion to `weights`, whole epochs (largest remainders first,
    earlier grades winning ties), then each raised to its minimum with epochs taken from the grades
    furthest above theirs."""
    if total < sum(minimums):
        raise ValueError(f"{total} epochs cannot give grades their minimums {minimums}")
    raw = [total * w / sum(weights) for w in weights]
    epochs = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - math.floor(raw[i])), i))[:total - sum(epochs)]:
        epochs[i] += 1
    for i, least in enumerate(minimums):
        while epochs[i] < least:
            donor = max(range(len(epochs)), key=lambda j: (epochs[j] - minimums[j], -j))
            epochs[donor] -= 1
            epochs[i] += 1
    return epochs


def resolve_values(values: dict, total_epochs: int) -> dict:
    """A trial's values as experiment fields: the grade weights (GRADE_SHARES, a dict) become
    whole grade epochs, at least one each, summing to the budget."""
    if not isinstance(values.get(GRADE_SHARES), dict):
        return dict(values)
    shares = values[GRADE_SHARES]
    weights = [float(shares[str(i)]) for i in range(len(shares))]
    out = {k: v for k, v in values.items() if k != GRADE_SHARES}
    out.update({"curriculum.grade_epochs": split_budget(total_epochs, weights, [1] * len(weights)),
                "curriculum.grade_fractions": None, "curriculum.total_epochs": None})
    return out


def rebudget(grade_epochs: list, epoch: int, weights: list) -> list:
    """Epochs per grade after an exploit at global epoch `epoch` (epochs completed) under new grade
    weights: the grades already complete keep theirs; the current grade (the one epoch `epoch` falls
    in) and the later ones split the rest of the budget by weight, the current one keeping at least
    the epochs it has trained, every one at least one."""
    total, start, done = sum(grade_epochs), 0, 0
    while done < len(grade_epochs) and start + grade_epochs[done] <= epoch:
        start += grade_epochs[done]
        done += 1
    if done >= len(grade_epochs) - 1:
        return list(grade_epochs)   # in the last grade: nothing left to split
    trained = epoch - start
    minimums = [max(trained, 1)] + [1] * (len(grade_epochs) - done - 1)
    return list(grade_epochs[:done]) + split_budget(total - start, weights[done:], minimums)


# ---- Tune ---------------------------------------------------------------------------------

def tune_mutations(spec: PBTSpec, num_grades: int) -> dict:
    """Tune's `hyperparam_mutations`, nested as the trial's config is ({"candidate": {"values": ...}})."""
    from ray import tune
    out = {}
    for d in spec.mutations:
        if d.discrete:
            domain = list(d.values)
        else:
            domain = (tune.loguniform if d.kind == "loguniform" else tune.uniform)(d.low, d.high)
        out[d.path] = {str(i): domain for i in range(num_grades)} if d.path == GRADE_SHARES else domain
    return {"candidate": {"values": out}}


def clipped(spec: PBTSpec):
    """Tune's `custom_explore_fn`: every perturbed value back inside its field's range."""
    def explore(config: dict) -> dict:
        values = config["candidate"]["values"]
        for d in spec.mutations:
            if d.discrete:
                continue
            if d.path == GRADE_SHARES:
                values[d.path] = {k: min(max(float(v), d.low), d.high) for k, v in values[d.path].items()}
            else:
                values[d.path] = min(max(float(values[d.path]), d.low), d.high)
        return config
    return explore


def curriculum_pbt(spec: PBTSpec, num_grades: int, seed: int):
    """Tune's PopulationBasedTraining on the reported epoch (it ranks on the TuneConfig's metric), that never decides
    at a trial's own last epoch (an exploit there would send a finishing trial back to an earlier
    epoch). Tune's PBT draws with Python's `random`: seeded here, so a search's decisions given the
    same results repeat."""
    import random
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class CurriculumPBT(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get("epoch", 0) >= result.get("epochs_planned", float("inf")):
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    random.seed(seed)
    return CurriculumPBT(time_attr="epoch",
                         perturbation_interval=spec.perturbation_interval,
                         quantile_fraction=spec.quantile_fraction, resample_probability=spec.resample_probability,
                         hyperparam_mutations=tune_mutations(spec, num_grades), custom_explore_fn=clipped(spec),
                         log_config=False, synch=spec.synch)


def check_one_budget(space, candidates: list) -> Optional[str]:
    """PBT copies checkpoints between trials, so every trial trains the same total epochs: the
    searched field that varies the total, or None."""
    totals = {}
    for values in candidates:
        totals.setdefault(space.experiment_for(values).total_epochs(), values)
    if len(totals) > 1:
        varying = [p for p in candidates[0] if len({str(c.get(p)) for c in candidates}) > 1
                   and p.startswith("curriculum.")]
        return varying[0] if varying else "curriculum"
    return None


def _share_dimension(spec: dict):
    """GRADE_SHARES' range as a Dimension-like record (a weight per grade, not a searched list)."""
    kind, (low, high) = next(iter(spec.items()))
    return _Range(GRADE_SHARES, kind, float(low), float(high))


@dataclass
class _Range:
    path: str
    kind: str
    low: float
    high: float
    values: Optional[list] = None
    discrete: bool = False
