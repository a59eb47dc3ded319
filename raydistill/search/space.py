"""Search spaces as files: load, validate against the base experiment, sample distinct trials.

Nothing here imports Ray: a wrong space must fail in the first second, naming the file and the
dimension, before any cluster work starts. Every candidate value of a dimension is checked by
building the base experiment with that value and calling `validate()`, so a split tuple that is
not increasing or an order of the wrong length is caught here, not in trial 7 of 20.

File format (see tune_spaces/*.yaml)::

    name: smoke                  # search directory name: <output>/<name>
    base: {...} | cifar10 | x.yaml   # the experiment every trial starts from
    method: ed                   # what each trial runs: ed (the curriculum), or a baseline to search it too (kd, ...)
    set: {data.limit_per_class: 400} # dotted overrides applied to base
    search:                      # one entry per searched field (dotted path)
      curriculum.splits: {valid_splits: true}      # every strictly increasing tuple ending at the last block
      curriculum.order: {permutations: true}       # every permutation of the groups
      curriculum.head_widths: {choice: [16, 32, 64]}
      optimizer.lr: {loguniform: [0.01, 0.2]}
      curriculum.alpha: {uniform: [0.1, 0.5]}
      distill.loss: {choice: [kd, dkd, lskd]}     # the distillation loss and its parameters, too
      distill.dkd.beta: {uniform: [1.0, 8.0]}
    samples: 8                   # trials (distinct configurations with random/grid)
    searcher: random             # random | grid | optuna | hyperopt | bohb (see search/searchers.py)
    points_to_evaluate: [{...}]  # complete points run first, exactly as given
    baselines: [scratch, kd, multi_teacher]   # run once beside the search, same teachers
    max_failures: 1              # restarts of a crashed trial (Tune's FailureConfig)
    scheduler: asha              # asha | fifo | hyperband (bohb's; the default with bohb) | pbt
    asha: {grace_period: 2, reduction_factor: 2}
    pbt: {perturbation_interval: 2, quantile_fraction: 0.25, resample_probability: 0.25,
          mutations: {optimizer.lr: {loguniform: [0.01, 0.2]}}}   # scheduler pbt only: see search/pbt.py
    max_concurrent: 2            # trials at once (default: what the CPUs allow)
    seed: 0                      # sampling seed
    output: runs/tune            # a shared path, or a storage URI (s3://bucket/tune) like a run's output.dir
"""
from __future__ import annotations

import importlib.util

import itertools
import json
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from raydistill.config import METHODS, ConfigError, Experiment, load_yaml, split_method
from raydistill.search.pbt import GRADE_SHARES, PBTSpec, parse_pbt
from raydistill.storage import is_uri, join

SCHEDULERS = ("asha", "fifo", "hyperband", "pbt")
SEARCHERS = ("random", "grid", "optuna", "hyperopt", "bohb")
MODEL_BASED = ("optuna", "hyperopt", "bohb")   # searchers that propose trials from the results so far
BASELINES = ("scratch", "kd", "multi_teacher")
KINDS = ("choice", "uniform", "loguniform", "randint", "valid_splits", "permutations")
SPACE_KEYS = ("name", "description", "base", "set", "method", "search", "samples", "searcher", "points_to_evaluate",
              "baselines", "max_failures", "scheduler", "asha", "pbt", "max_concurrent", "seed", "output")
JOINT_CHECK_DRAWS = 256   # random combinations checked up front for a model-based searcher
# Teachers are trained once per search from these fields, and Ray/output are set per trial:
# searching them would silently make trials disagree with their teachers or their resources.
NOT_SEARCHABLE = {"data": "teachers are trained once per search on the base experiment's data",
                  "teachers": "teachers are trained once per search with the base experiment's settings",
                  "methods": "every trial runs the space's `method` (ed unless the space names a baseline)",
                  "ray": "trial resources are set by the search (--max-concurrent, base ray section)",
                  "output": "trial run directories are set by the search",
                  "name": "trial names are set by the search",
                  "tracking": "the search logs every trial to the base experiment's trackers"}
ENUMERATE_LIMIT = 20000   # discrete spaces up to this size are enumerated exactly


class SpaceError(ConfigError):
    """A search-space problem; the message names the space file and the dimension."""


@dataclass
class Dimension:
    path: str                       # dotted experiment field, e.g. curriculum.splits
    kind: str                       # one of KINDS
    values: Optional[list] = None   # discrete candidates (choice, valid_splits, permutations, randint)
    low: Optional[float] = None     # range (uniform, loguniform; randint: both ends included)
    high: Optional[float] = None

    @property
    def discrete(self) -> bool:
        return self.values is not None

    def sample(self, rng: random.Random):
        if self.discrete:
            return self.values[rng.randrange(len(self.values))]
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def describe(self) -> str:
        if self.kind == "randint":
            return f"randint [{int(self.low)}, {int(self.high)}]"
        if self.discrete:
            return f"{self.kind}: {len(self.values)} values"
        return f"{self.kind} [{self.low}, {self.high}]"


@dataclass
class SearchSpace:
    name: str
    source: str                     # the space file (for messages)
    base: Experiment                # validated, with `set` applied
    dimensions: list
    samples: int = 4
    searcher: str = "random"
    points: list = field(default_factory=list)      # points_to_evaluate: complete {path: value}, run first
    baselines: list = field(default_factory=list)   # methods run once beside the search
    max_failures: int = 1
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    max_concurrent: Optional[int] = None
    seed: int = 0
    output: str = "runs/tune"
    description: str = ""
    method: str = "ed"              # what every trial runs: the ed curriculum, or a baseline searched the same way
    pbt: Optional[PBTSpec] = None   # scheduler pbt: the population's perturbations (search/pbt.py)
    _candidates: dict = field(default_factory=dict, repr=False)

    @property
    def search_dir(self) -> Union[Path, str]:
        """<output>/<name>: a local Path, or a URI (str) when `output` is a storage URI."""
        return join(self.output, self.name) if is_uri(self.output) else Path(self.output) / self.name

    @property
    def model_based(self) -> bool:
        return self.searcher in MODEL_BASED

    def experiment_for(self, values: dict) -> Experiment:
        """The base experiment with these searched values (validated)."""
        return apply_values(self.base, values).validate()

    def all_teacher_weights(self) -> list:
        """Every ed teacher-signal weight a trial may use (the base's, and a searched
        curriculum.all_teacher_weight's candidates or range ends): which teachers the search prepares."""
        weights = list(self.base.all_teacher_weights())
        for d in self.dimensions:
            if d.path == "curriculum.all_teacher_weight":
                for v in (d.values if d.discrete else [d.low, d.high]):
                    weights += [float(x) for x in (v if isinstance(v, list) else [v])]
        return weights

    def longest_budget(self) -> dict:
        """{path: value} of the searched value with the most epochs ({} when epochs are not searched):
        the trial budget of the baselines, and ASHA's/HyperBand's max_t."""
        best, most = {}, self.base.total_epochs()
        for d in self.dimensions:
            for value in d.values if d.discrete else []:
                try:
                    epochs = self.experiment_for({d.path: value}).total_epochs()
                except ConfigError:
                    continue
                if epochs > most:
                    best, most = {d.path: value}, epochs
        return best

    def max_epochs(self) -> int:
        return self.experiment_for(self.longest_budget()).total_epochs()

    def candidates(self, samples: Optional[int] = None) -> list:
        """The configurations ({path: value}) fixed before the search starts, reproducible from `seed`:
        points_to_evaluate first, then `samples` in all (random: distinct valid draws; grid: every
        valid combination, `samples` ignored). A model-based searcher starts from the points alone
        and proposes the rest of its `samples` trials itself."""
        n = samples or self.samples
        if len(self.points) > n and self.searcher != "grid":
            raise SpaceError(f"{self.source}: points_to_evaluate: {len(self.points)} points but only {n} trials; "
                             f"raise samples or give fewer points")
        if n not in self._candidates:
            points = [dict(p) for p in self.points]
            if self.model_based:
                self._candidates[n] = points
            elif self.searcher == "grid":
                seen = {_key(p) for p in points}
                self._candidates[n] = points + [c for c in self._valid_grid() if _key(c) not in seen]
            else:
                self._candidates[n] = points + self._draw(n - len(points), {_key(p) for p in points})
        return self._candidates[n]

    def _valid_grid(self) -> list:
        """Every valid combination of discrete dimensions, in enumeration order (or a SpaceError)."""
        continuous = [d.path for d in self.dimensions if not d.discrete]
        if continuous:
            raise SpaceError(f"{self.source}: searcher: grid needs discrete dimensions (choice, randint, valid_splits, "
                             f"permutations); {continuous[0]} is {self._dim(continuous[0]).kind}")
        size = _product_size(self.dimensions)
        if size > ENUMERATE_LIMIT:
            raise SpaceError(f"{self.source}: searcher: grid over {size} combinations (limit {ENUMERATE_LIMIT}); "
                             f"use searcher random or a model-based searcher")
        combos = [dict(zip((d.path for d in self.dimensions), values))
                  for values in itertools.product(*(d.values for d in self.dimensions))]
        return [c for c in combos if self._valid(c)]

    def _dim(self, path: str) -> Dimension:
        return next(d for d in self.dimensions if d.path == path)

    def _draw(self, n: int, exclude: set) -> list:
        rng = random.Random(self.seed)
        if n <= 0:
            return []
        if all(d.discrete for d in self.dimensions) and _product_size(self.dimensions) <= ENUMERATE_LIMIT:
            combos = [dict(zip((d.path for d in self.dimensions), values))
                      for values in itertools.product(*(d.values for d in self.dimensions))]
            valid = [c for c in combos if _key(c) not in exclude and self._valid(c)]
            if len(valid) < n:
                raise SpaceError(f"{self.source}: search: the space has only {len(valid) + len(exclude)} distinct "
                                 f"valid configuration(s) ({len(combos)} combinations), asked for "
                                 f"{n + len(exclude)} trials; lower --samples or widen the space")
            return rng.sample(valid, n)
        found, seen = [], set(exclude)
        for _ in range(200 * n):
            combo = {d.path: d.sample(rng) for d in self.dimensions}
            key = _key(combo)
            if key not in seen and self._valid(combo):
                seen.add(key)
                found.append(combo)
                if len(found) == n:
                    return found
        raise SpaceError(f"{self.source}: search: found only {len(found)} distinct valid configurations in "
                         f"{200 * n} draws, asked for {n} trials; lower --samples or widen the space")

    def check_jointly_valid(self, draws: int = JOINT_CHECK_DRAWS) -> None:
        """A model-based searcher proposes any combination of the dimensions, so none may be invalid
        together: checks `draws` seeded random combinations (all of them when fewer) and names the first
        invalid one. Random and grid search skip invalid combinations instead."""
        rng = random.Random(self.seed)
        if all(d.discrete for d in self.dimensions) and _product_size(self.dimensions) <= draws:
            combos = [dict(zip((d.path for d in self.dimensions), values))
                      for values in itertools.product(*(d.values for d in self.dimensions))]
        else:
            combos = [{d.path: d.sample(rng) for d in self.dimensions} for _ in range(draws)]
        for combo in combos:
            try:
                self.experiment_for(combo)
            except ConfigError as err:
                raise SpaceError(f"{self.source}: search: searcher {self.searcher} may propose any combination, but "
                                 f"{json.dumps(combo)} is invalid: {err}; make the dimensions independent or use "
                                 f"searcher: random (it skips invalid combinations)") from None

    def _valid(self, values: dict) -> bool:
        try:
            self.experiment_for(values)
            return True
        except ConfigError:
            return False


def _key(values: dict) -> str:
    return json.dumps(values, sort_keys=True)


def _product_size(dimensions) -> int:
    return math.prod(len(d.values) for d in dimensions)


# ---- applying values to an experiment --------------------------------------------------------

def apply_values(exp: Experiment, values: dict, source: str = "search") -> Experiment:
    """A new experiment with dotted fields set; unknown paths raise a SpaceError naming them."""
    raw = exp.to_dict()
    for path, value in values.items():
        parent, key = _walk(raw, path, source)
        parent[key] = value
    return Experiment.from_dict(raw, source=source)


def _walk(raw: dict, path: str, source: str) -> tuple:
    """(section, field) of a dotted path in an experiment dict, or a SpaceError naming it."""
    node, parts = raw, path.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth + 1])
        if not isinstance(node, dict):
            raise SpaceError(f"{source}.{path}: unknown parameter path ({'.'.join(parts[:depth])!r} is a value, "
                             f"not a section)")
        if part not in node:
            raise SpaceError(f"{source}.{path}: unknown parameter path ({here!r} does not exist; valid there: "
                             f"{', '.join(node)})")
        if depth == len(parts) - 1:
            return node, part
        node = node[part]


# ---- loading ---------------------------------------------------------------------------------

def space_dirs() -> list:
    """Where space names are looked up: ./tune_spaces, then the tune_spaces/ next to the package
    (source checkouts and editable installs)."""
    package_root = Path(str(resources.files("raydistill"))).parent
    return [Path("tune_spaces"), package_root / "tune_spaces"]


def shipped_spaces() -> list:
    names = set()
    for d in space_dirs():
        if d.is_dir():
            names |= {p.stem for p in d.glob("*.yaml")}
    return sorted(names)


def find_space(name_or_path: Union[str, Path]) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpaceError(f"space file {path}: not found")
        return path
    for d in space_dirs():
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    raise SpaceError(f"space {name_or_path!r}: no such file and no space of that name in tune_spaces/ "
                     f"(known: {', '.join(shipped_spaces()) or 'none'})")


def load_space(name_or_path: Union[str, Path, "SearchSpace"]) -> SearchSpace:
    """Load and validate a space file (path or name in tune_spaces/). Raises SpaceError."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    path = find_space(name_or_path)
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(f"space file {path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return space_from_dict(raw, source=str(path), base_dir=path.parent)


def space_from_dict(raw: Any, source: str = "space", base_dir: Path = Path(".")) -> SearchSpace:
    def fail(key: str, expected: str, value) -> SpaceError:
        return SpaceError(f"{source}: {key}: expected {expected}, got {value!r}")

    if not isinstance(raw, dict):
        raise fail("top level", "a mapping with base and search", raw)
    unknown = sorted(set(raw) - set(SPACE_KEYS))
    if unknown:
        raise SpaceError(f"{source}: {unknown[0]}: unknown key (valid: {', '.join(SPACE_KEYS)})")
    base = _load_base(raw.get("base"), source, base_dir)
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise fail("set", "a mapping of dotted fields to values", overrides)
    try:
        base = apply_values(base, overrides, source=f"{source}: set").validate()
    except SpaceError:
        raise
    except ConfigError as err:
        raise SpaceError(f"{source}: the base experiment (with set) is invalid: {err}") from None
    method = raw.get("method", "ed")
    if not isinstance(method, str) or split_method(method)[0] not in METHODS:
        raise fail("method", f"one of {list(METHODS)} (or method+loss, e.g. kd+dkd): what every trial runs", method)
    try:
        base = apply_values(base, {"methods": [method]}).validate()
    except ConfigError as err:
        raise SpaceError(f"{source}: method: {method!r} is invalid for the base experiment: {err}") from None

    search = raw.get("search")
    if search is None and raw.get("scheduler") == "pbt":
        search = {}   # the mutations' ranges draw the initial population
    if not isinstance(search, dict) or (not search and raw.get("scheduler") != "pbt"):
        raise fail("search", "a mapping of at least one dotted field to a dimension", search)
    dims = [_dimension(path, spec, base, source) for path, spec in search.items()]
    pbt = _pbt(raw, base, dims, source)

    samples = raw.get("samples", 4)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise fail("samples", "a positive integer", samples)
    searcher = raw.get("searcher", "random")
    if searcher not in SEARCHERS:
        raise fail("searcher", f"one of {list(SEARCHERS)}", searcher)
    scheduler = raw.get("scheduler") or ("hyperband" if searcher == "bohb" else "asha")
    check_scheduler(scheduler, searcher, source)
    baselines = raw.get("baselines") or []
    if not isinstance(baselines, list) or not set(baselines) <= set(BASELINES) or len(set(baselines)) < len(baselines):
        raise fail("baselines", f"a list of distinct methods from {list(BASELINES)}", baselines)
    max_failures = raw.get("max_failures", 1)
    if not isinstance(max_failures, int) or isinstance(max_failures, bool) or max_failures < -1:
        raise fail("max_failures", "an integer >= 0 (restarts of a crashed trial; -1: unlimited)", max_failures)
    asha = raw.get("asha") or {}
    if not isinstance(asha, dict) or set(asha) - {"grace_period", "reduction_factor"}:
        raise fail("asha", "a mapping with grace_period and/or reduction_factor", asha)
    grace, factor = asha.get("grace_period", 1), asha.get("reduction_factor", 2)
    if not isinstance(grace, int) or grace < 1:
        raise fail("asha.grace_period", "a positive integer (epochs)", grace)
    if not isinstance(factor, int) or factor < 2:
        raise fail("asha.reduction_factor", "an integer >= 2", factor)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise fail("max_concurrent", "a positive integer or null", max_concurrent)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise fail("seed", "an integer", seed)
    name = raw.get("name") or Path(source).stem
    if not isinstance(name, str) or "/" in name:
        raise fail("name", "a directory name", name)
    output = raw.get("output", "runs/tune")
    if not isinstance(output, str) or not output:
        raise fail("output", "a directory path or a storage URI", output)
    space = SearchSpace(name=name, source=source, base=base, dimensions=dims, samples=samples, searcher=searcher,
                        baselines=list(baselines), max_failures=max_failures, scheduler=scheduler,
                        grace_period=grace, reduction_factor=factor, max_concurrent=max_concurrent, seed=seed,
                        output=output, description=str(raw.get("description") or ""), method=method, pbt=pbt)
    space.points = _points(raw.get("points_to_evaluate") or [], space)
    check_searcher(space)
    return space


def check_searcher(space: SearchSpace) -> None:
    """A model-based searcher: its packages are installed and every combination is valid."""
    if space.model_based:
        check_installed(space.searcher, space.source)
        space.check_jointly_valid()


def _pbt(raw: dict, base: Experiment, dims: list, source: str) -> Optional[PBTSpec]:
    """The `pbt:` block (scheduler pbt only); each mutated field not searched joins the dimensions,
    so the initial population is drawn from its range with the space's seed."""
    if raw.get("scheduler") != "pbt":
        if raw.get("pbt") is not None:
            raise SpaceError(f"{source}: pbt: only with scheduler: pbt, got scheduler {raw.get('scheduler')!r}")
        return None
    try:
        spec = parse_pbt(raw.get("pbt"), source, base, lambda path, s: _dimension(path, s, base, source))
    except SpaceError:
        raise
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    searched = {d.path for d in dims}
    dims += [Dimension(d.path, d.kind, values=d.values, low=d.low, high=d.high) for d in spec.mutations
             if d.path not in searched and d.path != GRADE_SHARES]
    return spec


def check_scheduler(scheduler, searcher: str, source: str) -> None:
    """asha/fifo with any searcher but bohb; hyperband (HyperBandForBOHB) is bohb's, and bohb needs it;
    pbt perturbs a population of pre-drawn trials (random or grid), which a model-based searcher's
    proposals would fight."""
    if scheduler not in SCHEDULERS:
        raise SpaceError(f"{source}: scheduler: expected one of {list(SCHEDULERS)}, got {scheduler!r}")
    if scheduler == "pbt" and searcher in MODEL_BASED:
        raise SpaceError(f"{source}: searcher: scheduler pbt runs with searcher random or grid (PBT itself chooses "
                         f"each trial's next values), got searcher {searcher!r}")
    if (scheduler == "hyperband") != (searcher == "bohb"):
        raise SpaceError(f"{source}: scheduler: searcher bohb runs with scheduler hyperband (Tune's HyperBandForBOHB) "
                         f"and hyperband only with bohb; got searcher {searcher!r} with scheduler {scheduler!r}")


def _points(points, space: SearchSpace) -> list:
    """points_to_evaluate: complete points (every searched field), each value inside its dimension,
    the combination valid; returned as given."""
    where = f"{space.source}: points_to_evaluate"
    if not isinstance(points, list):
        raise SpaceError(f"{where}: expected a list of mappings from every searched field to a value, got {points!r}")
    paths = [d.path for d in space.dimensions]
    for i, point in enumerate(points):
        if not isinstance(point, dict) or set(point) != set(paths):
            got = sorted(point) if isinstance(point, dict) else point
            raise SpaceError(f"{where}[{i}]: expected a value for each searched field {paths}, got {got!r}")
        for d in space.dimensions:
            value = point[d.path]
            inside = (value in d.values if d.discrete else
                      isinstance(value, (int, float)) and not isinstance(value, bool) and d.low <= value <= d.high)
            if not inside:
                raise SpaceError(f"{where}[{i}].{d.path}: {value!r} is outside the dimension ({d.describe()})")
        try:
            space.experiment_for(point)
        except ConfigError as err:
            raise SpaceError(f"{where}[{i}]: invalid for the base experiment: {err}") from None
    if len({_key(p) for p in points}) < len(points):
        raise SpaceError(f"{where}: the points must be distinct")
    return [dict(p) for p in points]


def _load_base(base, source: str, base_dir: Path) -> Experiment:
    try:
        if isinstance(base, dict):
            return Experiment.from_dict(base, source=f"{source}: base")
        if isinstance(base, str):
            near = base_dir / base
            return Experiment.load(near if near.suffix in (".yaml", ".yml") and near.is_file() else base)
    except ConfigError as err:
        raise SpaceError(f"{source}: base: {err}") from None
    raise SpaceError(f"{source}: base: expected an experiment mapping, a shipped experiment name or a YAML path, "
                     f"got {base!r}")


def _dimension(path: Any, spec: Any, base: Experiment, source: str) -> Dimension:
    where = f"{source}: search.{path}"
    if not isinstance(path, str):
        raise SpaceError(f"{where}: expected a dotted field name like curriculum.order")
    if path.split(".")[0] in NOT_SEARCHABLE:
        raise SpaceError(f"{where}: cannot be searched: {NOT_SEARCHABLE[path.split('.')[0]]}; set it in base/set")
    _walk(base.to_dict(), path, f"{source}: search")   # the path exists
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise SpaceError(f"{where}: expected a mapping with exactly one of {list(KINDS)}, e.g. "
                         f"{{choice: [a, b]}}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpaceError(f"{where}: choice: expected a non-empty list of values, got {arg!r}")
        dim = Dimension(path, kind, values=list(arg))
    elif kind == "valid_splits":
        if path != "curriculum.splits" or arg is not True:
            raise SpaceError(f"{where}: valid_splits: expected `curriculum.splits: {{valid_splits: true}}`")
        dim = Dimension(path, kind, values=valid_splits(base, where))
    elif kind == "permutations":
        if path != "curriculum.order" or arg is not True:
            raise SpaceError(f"{where}: permutations: expected `curriculum.order: {{permutations: true}}`")
        dim = Dimension(path, kind, values=[list(p) for p in itertools.permutations(range(base.num_groups()))])
    elif kind == "randint":
        ok = (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in arg) and arg[0] <= arg[1])
        if not ok or arg[1] - arg[0] >= ENUMERATE_LIMIT:
            raise SpaceError(f"{where}: randint: expected [low, high], integers with low <= high (both included, "
                             f"at most {ENUMERATE_LIMIT} values), got {arg!r}")
        dim = Dimension(path, kind, values=list(range(arg[0], arg[1] + 1)), low=arg[0], high=arg[1])
    else:
        ok = (isinstance(arg, list) and len(arg) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                              for x in arg) and arg[0] < arg[1])
        if not ok or (kind == "loguniform" and arg[0] <= 0):
            raise SpaceError(f"{where}: {kind}: expected [low, high] with low < high"
                             f"{' and low > 0' if kind == 'loguniform' else ''}, got {arg!r}")
        dim = Dimension(path, kind, low=float(arg[0]), high=float(arg[1]))
    for value in dim.values if dim.discrete and kind != "randint" else [dim.low, dim.high]:
        try:
            apply_values(base, {path: value}, source=f"{source}: search").validate()
        except SpaceError:
            raise
        except ConfigError as err:
            raise SpaceError(f"{where}: candidate {value!r} is invalid for the base experiment: {err}") from None
    return dim


def valid_splits(base: Experiment, where: str) -> list:
    """Every strictly increasing tuple of one block index per grade that ends at the last block."""
    from raydistill.models import num_blocks
    grades, blocks = base.num_groups(), num_blocks(base.student.arch)
    tuples = [list(c) + [blocks] for c in itertools.combinations(range(1, blocks), grades - 1)]
    if not tuples:
        raise SpaceError(f"{where}: valid_splits: no strictly increasing split points exist: {grades} grades need "
                         f"{grades} distinct block indices but {base.student.arch} has {blocks} blocks")
    return tuples


def space_fingerprint(space: SearchSpace, candidates: list) -> dict:
    """What a search directory was created for; a resumed search must match it."""
    return {"space": space.name, "base": space.base.to_dict(), "candidates": candidates,
            "searcher": space.searcher, "samples": space.samples, "seed": space.seed,
            "scheduler": space.scheduler, "grace_period": space.grace_period,
            "reduction_factor": space.reduction_factor, "baselines": space.baselines,
            **({"pbt": space.pbt.to_dict()} if space.pbt is not None else {}),
            # named only when not ed: a search directory made before spaces had a method stays resumable
            **({"method": space.method} if space.method != "ed" else {})}


def space_to_dict(space: SearchSpace) -> dict:
    """A self-contained space file for `space` (base inlined, dimensions as explicit candidates or
    ranges): `space_from_dict` of it samples the same trials. Used to ship a search as a Ray Job."""
    search = {d.path: ({"choice": list(d.values)} if d.discrete and d.kind != "randint" else
                       {d.kind: [d.low, d.high]}) for d in space.dimensions}
    return {"name": space.name, "base": space.base.to_dict(), "method": space.method, "search": search,
            "samples": space.samples,
            "searcher": space.searcher, "points_to_evaluate": space.points, "baselines": space.baselines,
            "max_failures": space.max_failures, "scheduler": space.scheduler,
            "asha": {"grace_period": space.grace_period, "reduction_factor": space.reduction_factor},
            **({"pbt": space.pbt.to_dict()} if space.pbt is not None and space.scheduler == "pbt" else {}),
            "max_concurrent": space.max_concurrent, "seed": space.seed, "output": space.output}


PACKAGES = {"optuna": ("optuna",), "hyperopt": ("hyperopt",), "bohb": ("ConfigSpace", "hpbandster")}


def check_installed(searcher: str, source: str) -> None:
    """A model-based searcher's packages, checked before Ray starts."""
    missing = [p for p in PACKAGES.get(searcher, ()) if importlib.util.find_spec(p) is None]
    if missing:
        raise SpaceError(f"{source}: searcher: {searcher} needs {', '.join(missing)}: "
                         f"pip install 'raydistill[{searcher}]'")
