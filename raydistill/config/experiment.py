"""The whole experiment: the top-level fields, the sections under them, and the rules that span sections.

Each section checks its own fields (`DataConfig.check`, ...); `Experiment.validate` runs those, then the
rules that need two sections at once. Derived values (`splits()`, `grade_epochs()`, `worker_cpus()`, ...)
resolve the defaults that depend on other sections, so every caller reads one answer.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Union

import yaml

from raydistill.config.curriculum import CurriculumConfig
from raydistill.config.data import DataConfig
from raydistill.config.distill import LOSSES, METHODS, DistillConfig, split_method
from raydistill.config.errors import ConfigError, need
from raydistill.config.networks import StudentConfig, TeachersConfig
from raydistill.config.optimizer import OptimizerConfig
from raydistill.config.output import OutputConfig, TrackingConfig
from raydistill.config.placement import RayConfig
from raydistill.config.reading import apply_overrides, build, parse_yaml


@dataclass
class Experiment:
    """One experiment: data, teachers, student, curriculum, methods and how they run. Every field has a
    default; `Experiment.load(name_or_path)` reads a YAML file or a shipped experiment, `with_overrides`
    applies `--set`-style overrides, `validate()` checks everything that can be checked without data."""
    name: str = "experiment"            # run directory name (unless output.name); default tracker project name
    seed: int = 0                       # seeds the students' (and teachers') init, shuffling and augmentation
    methods: list = field(default_factory=lambda: list(METHODS))  # ed, scratch, kd, multi_teacher (+loss: ed+dkd)
    device: str = "auto"                # auto (CUDA if present) | cpu | cuda
    channels_last: bool = True          # NHWC activations and weights: faster convs on CPU and tensor cores
    precision: str = "fp32"             # fp32 | bf16 | fp16: autocast of student and teacher forwards
    compile: bool = False               # torch.compile the student and the teachers
    test_every_epoch: bool = True       # false: test accuracy only at each grade's last epoch (all a summary reports)
    device_data_fraction: float = 0.5   # uint8 training set moves to the GPU if it needs at most this of free memory
    data: DataConfig = field(default_factory=DataConfig)
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config") -> "Experiment":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
        return build(cls, raw, prefix="")

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "Experiment":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        return cls.from_yaml_text(path.read_text(), source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, *, source: str) -> "Experiment":
        """An experiment from YAML text read from `source` (a file, or a storage URI: see cli)."""
        return cls.from_dict(parse_yaml(text, source) or {}, source=source)

    @classmethod
    def load(cls, name_or_path: Union[str, Path]) -> "Experiment":
        """A YAML path, or the name of an example shipped in raydistill/experiments."""
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.exists():
            return cls.from_yaml(path)
        shipped = resources.files("raydistill") / "experiments" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"config {name_or_path!r}: no such file and no shipped experiment of that name "
                f"(shipped: {', '.join(shipped_experiments())})")
        return cls.from_yaml(Path(str(shipped)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: list[str]) -> "Experiment":
        """Apply `a.b=value` strings (values parsed as YAML) and return a new experiment."""
        return Experiment.from_dict(apply_overrides(Experiment, self.to_dict(), overrides), source="overrides")

    # ---- validation -----------------------------------------------------------------------
    def _check_top_level(self) -> None:
        """The top-level fields: the methods' names, the device and its precision, test cadence."""
        need(isinstance(self.methods, list) and len(self.methods) > 0, "methods",
             f"a non-empty list of {list(METHODS)}", self.methods)
        for m in self.methods:
            base, loss = split_method(m)
            need(isinstance(m, str) and base in METHODS and loss in (None, *LOSSES), "methods",
                 f"each one of {list(METHODS)}, or method+loss with a loss in {list(LOSSES)} (e.g. ed+dkd)", m)
            need(not (base == "scratch" and loss), "methods", "scratch without a loss (it trains with CE only)", m)
        need(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        from raydistill.distill.precision import PRECISIONS
        need(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}", self.precision)
        if self.device == "cpu":
            self.check_precision_on("cpu", "device")
        need(0 <= self.device_data_fraction <= 1, "device_data_fraction", "a number in [0, 1]",
             self.device_data_fraction)
        need(isinstance(self.test_every_epoch, bool), "test_every_epoch", "true or false", self.test_every_epoch)

    def validate(self) -> "Experiment":
        """Check every field that can be checked without data; raise ConfigError naming it. The top level
        and each section check their own fields first, so the rules here, the ones that span sections,
        see well-formed sections."""
        self._check_top_level()
        for section in (self.distill, self.data, self.teachers, self.student, self.curriculum, self.optimizer,
                        self.ray, self.output, self.tracking):
            section.check()
        # methods against distill.loss: an entry without +loss means distill.loss
        resolved = [self.method_loss(m) for m in self.methods]
        need(len(set(resolved)) == len(resolved), "methods",
             f"no duplicates (an entry without +loss uses distill.loss: {self.distill.loss})", self.methods)
        self._check_soft_label_cache()
        self._check_grades()
        need(self.curriculum.switch == "fixed" or self.data.val_fraction > 0, "data.val_fraction",
             "a validation split (above 0) with curriculum.switch: plateau (grades end on validation accuracy)",
             self.data.val_fraction)
        # each global batch against ray.workers: split evenly, and enough per worker for BatchNorm
        o, t, r = self.optimizer, self.teachers, self.ray
        for field_path, batch in (("optimizer.batch_size", o.batch_size), ("teachers.batch_size", t.batch_size)):
            need(batch % r.workers == 0 and batch // r.workers >= 2, field_path,
                 f"a multiple of ray.workers ({r.workers}) with at least 2 samples per worker (BatchNorm)", batch)
        return self

    def _check_grades(self) -> None:
        """curriculum's per-grade fields against data's groups (one grade each) and the student's blocks
        (the grades' split points)."""
        from raydistill.models import num_blocks
        k = self.num_groups()
        c = self.curriculum
        blocks = num_blocks(self.student.arch)
        splits = self.splits()
        need(len(splits) == k, "curriculum.splits", f"{k} split points (one per grade)", c.splits)
        for i, s in enumerate(splits):
            need(isinstance(s, int) and 1 <= s <= blocks, f"curriculum.splits[{i}]",
                 f"a block index in 1..{blocks} ({self.student.arch} has {blocks} blocks)", s)
        need(all(a < b for a, b in zip(splits, splits[1:])), "curriculum.splits", "strictly increasing", splits)
        need(splits[-1] == blocks, "curriculum.splits",
             f"the last grade to end at the last block ({blocks}) so it is the complete student", splits)
        widths = self.head_widths()
        need(len(widths) == k - 1, "curriculum.head_widths", f"one width or {k - 1} (one per grade but the last)",
             c.head_widths)
        for i, w in enumerate(widths):
            need(isinstance(w, int) and w >= 1, f"curriculum.head_widths[{i}]", "a positive integer", w)
        order = self.order()
        need(sorted(order) == list(range(k)), "curriculum.order", f"a permutation of {list(range(k))}", c.order)
        self._check_grade_budget(k)
        for name in ("alpha", "all_teacher_weight"):
            values = self._per_grade(name)
            need(len(values) == k, f"curriculum.{name}", f"one number or {k} (one per grade)", getattr(c, name))
            for i, v in enumerate(values):
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                     f"curriculum.{name}" + (f"[{i}]" if isinstance(getattr(c, name), list) else ""),
                     "a number in [0, 1]", v)

    def _check_grade_budget(self, k: int) -> None:
        """grade_epochs, or grade_fractions of total_epochs: one per grade, early grades may be 0, the
        last (the complete student) gets at least one epoch. Checked as one budget, the count first,
        so a list of the wrong length is reported as that rather than by one of its values."""
        c = self.curriculum
        if c.grade_fractions is not None:
            need(c.grade_epochs is None, "curriculum.grade_epochs", "null when curriculum.grade_fractions is set "
                 "(the fractions of curriculum.total_epochs give each grade's epochs)", c.grade_epochs)
            need(isinstance(c.total_epochs, int) and c.total_epochs >= 1, "curriculum.total_epochs",
                 "a positive integer with curriculum.grade_fractions", c.total_epochs)
            f = c.grade_fractions
            need(isinstance(f, list) and len(f) == k, "curriculum.grade_fractions", f"{k} shares (one per grade)", f)
            for i, v in enumerate(f):
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                     f"curriculum.grade_fractions[{i}]", "a share in [0, 1]", v)
            need(abs(sum(f) - 1) <= 1e-6, "curriculum.grade_fractions", f"shares that sum to 1 (sum {sum(f):g})", f)
            need(f[-1] > 0 and self.grade_epochs()[-1] >= 1, "curriculum.grade_fractions",
                 f"a last share that leaves the complete student at least one of {c.total_epochs} epochs", f)
            return
        need(c.total_epochs is None, "curriculum.total_epochs", "null unless curriculum.grade_fractions is set "
             "(grade_epochs give the total)", c.total_epochs)
        epochs = self.grade_epochs()
        need(len(epochs) == k, "curriculum.grade_epochs", f"{k} values (one per grade)", c.grade_epochs)
        for i, e in enumerate(epochs):
            last = i == len(epochs) - 1
            need(isinstance(e, int) and not isinstance(e, bool) and e >= (1 if last else 0),
                 f"curriculum.grade_epochs[{i}]",
                 "a positive integer (the complete student's grade)" if last else
                 "a non-negative integer (0: no such fragment grade, its group joins the next)", e)

    def _check_soft_label_cache(self) -> None:
        """teachers' soft-label cache against the methods' losses: top-k keeps k logits and one value for
        the rest, exact in softmax mass at curriculum.temperature only, so it serves kd at that temperature
        and would silently distort any other loss."""
        t = self.teachers
        if t.soft_labels != "cache" or t.cache_format != "topk":
            return
        by_loss: dict = {}
        for m in self.methods:
            base, loss = self.method_loss(m)
            if base != "scratch" and self._topk_distorts(loss):
                by_loss.setdefault(loss, []).append(m)
        need(not by_loss, "teachers.cache_format", "; ".join(
            f"float16 when a method distils with {loss} ({', '.join(methods)}): {self._topk_reason(loss)}"
            for loss, methods in by_loss.items()), t.cache_format)

    def _topk_distorts(self, loss: str) -> bool:
        """Whether a top-k soft-label cache would feed `loss` other teacher probabilities than the
        full logits give: every loss but kd run at curriculum.temperature on the raw logits."""
        if loss != "kd":
            return True
        own = self.distill.kd.temperature
        return own is not None and float(own) != float(self.curriculum.temperature)

    def _topk_reason(self, loss: str) -> str:
        if loss == "dkd":
            return ("DKD's target-class term needs the teacher's exact target-class logit, and top-k stores the "
                    "mean of the dropped logits in its place whenever the target is not among the k largest")
        if loss == "lskd":
            return ("LSKD z-scores the teacher's logits (mean and spread over all classes), and top-k replaces all "
                    "but the k largest by one value exact in softmax mass at curriculum.temperature only")
        if loss == "kd":
            return (f"distill.kd.temperature {self.distill.kd.temperature} is not curriculum.temperature "
                    f"{self.curriculum.temperature}, the only temperature top-k keeps the teacher's probabilities "
                    "at (set distill.kd.temperature: null, or use float16)")
        return "top-k keeps the teacher's probabilities at curriculum.temperature for kd only"

    # ---- derived values ------------------------------------------------------------------
    def image_size(self) -> int:
        """data.image_size, or its default for the source: 32 for builtin/cifar10/cifar100, 224 otherwise."""
        return self.data.image_side()

    def augment_preset(self) -> str:
        """data.augment as a preset name (see DataConfig.augment_preset)."""
        return self.data.augment_preset()

    def method_loss(self, entry: str) -> tuple:
        """(method, distillation loss) of a `methods` entry; without `+loss` it is `distill.loss`."""
        base, loss = split_method(entry)
        return base, loss or self.distill.loss

    def loss_params(self) -> dict:
        """{loss: its configured parameters}, unset (null) ones left to the engine's defaults."""
        return {name: {k: v for k, v in dataclasses.asdict(getattr(self.distill, name)).items() if v is not None}
                for name in LOSSES}

    def num_groups(self) -> int:
        return self.data.num_groups()

    def splits(self) -> list:
        """Split points, defaulting to grades of (nearly) equal block counts."""
        if self.curriculum.splits is not None:
            return list(self.curriculum.splits)
        from raydistill.models import num_blocks
        k, blocks = self.num_groups(), num_blocks(self.student.arch)
        return [round((g + 1) * blocks / k) for g in range(k)]

    def head_widths(self) -> list:
        w = self.curriculum.head_widths
        return list(w) if isinstance(w, list) else [w] * (self.num_groups() - 1)

    def order(self) -> list:
        o = self.curriculum.order
        return list(o) if o is not None else list(range(self.num_groups()))

    def grade_epochs(self) -> list:
        """curriculum.grade_epochs; with grade_fractions, each early grade's share of total_epochs rounded
        to whole epochs (halves up) and the rest to the last grade, so the total is exact."""
        c = self.curriculum
        if c.grade_fractions is not None and isinstance(c.total_epochs, int):
            early = [int(math.floor(f * c.total_epochs + 0.5)) for f in c.grade_fractions[:-1]]
            return [*early, c.total_epochs - sum(early)]
        e = c.grade_epochs
        return list(e) if e is not None else [10] * self.num_groups()

    def _per_grade(self, name: str) -> list:
        value = getattr(self.curriculum, name)
        return list(value) if isinstance(value, list) else [value] * self.num_groups()

    def grade_alphas(self) -> list:
        """curriculum.alpha per grade."""
        return [float(a) for a in self._per_grade("alpha")]

    def all_teacher_weights(self) -> list:
        """curriculum.all_teacher_weight per grade (ed's teacher signal; see `teachers_needed`)."""
        return [float(w) for w in self._per_grade("all_teacher_weight")]

    def total_epochs(self) -> int:
        return sum(self.grade_epochs())

    def context_options(self) -> dict:
        """TrainContext fields set by the experiment: how the step runs on its device."""
        return {"channels_last": self.channels_last, "precision": self.precision, "compile": self.compile,
                "device_data_fraction": self.device_data_fraction}

    def serving_options(self) -> dict:
        """FrozenTeacher options: teachers infer in the student's layout and precision, compiled with it."""
        return {"channels_last": self.channels_last, "precision": self.precision, "compile": self.compile}

    def check_precision_on(self, device_type: str, field: str) -> None:
        """fp16 needs CUDA: on the CPU its autocast is emulated (slow) and GradScaler is CUDA's.
        `field` names the setting that put the work on `device_type`."""
        if self.precision == "fp16" and device_type != "cuda":
            raise ConfigError(f"precision: expected fp32 or bf16 when {field} puts the work on {device_type} "
                              f"(fp16 needs a CUDA device), got 'fp16'")

    def check_devices(self, student_device: str, backend: str) -> None:
        """Checks that need the device a backend trains on (`run` resolves device auto first; `validate`
        does the same, so both refuse the same configs on the same machine with the same message)."""
        field = "ray.use_gpu"
        if backend == "local":
            auto_on_cpu = self.device == "auto" and student_device != "cuda"
            field = "device auto (no CUDA device on this machine)" if auto_on_cpu else "device"
        self.check_precision_on(student_device, field)
        if backend == "ray" and self.ray.teachers == "actors":
            self.check_precision_on("cuda" if self.ray.teacher_gpus > 0 else "cpu", "ray.teacher_gpus")

    def worker_cpus(self) -> float:
        """CPUs (and torch threads) per training worker: the configured value, or on a local
        instance the cores left after teacher actors, shared evenly, so one worker uses them all."""
        r = self.ray
        if r.cpus_per_worker is not None:
            return r.cpus_per_worker
        if r.address:
            return 1.0
        import os
        spare = (os.cpu_count() or 1) - (r.teacher_cpus * (self.num_groups() + 1) if r.teachers == "actors" else 0)
        return float(max(1, int(spare // r.workers)))

    def sync_batchnorm(self) -> bool:
        """ray.sync_batchnorm, defaulting to on when there is more than one worker."""
        s = self.ray.sync_batchnorm
        return self.ray.workers > 1 if s is None else s

    def run_name(self) -> str:
        return self.output.name or self.name


def shipped_experiments() -> list[str]:
    folder = resources.files("raydistill") / "experiments"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
