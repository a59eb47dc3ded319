"""Experiment configuration: one tree of dataclasses, YAML in and out, validated before any work.

Every field has a default so a YAML file only names what differs. `validate()` checks what can
be checked without touching data; errors name the dotted field path and what was expected, so
a typo in a long cluster run fails in the first second, not after the teachers trained.
"""
from __future__ import annotations

import copy
import math
import re
import dataclasses
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

METHODS = ("ed", "scratch", "kd", "multi_teacher")
LOSSES = ("kd", "dkd", "lskd")          # = raydistill.distill.losses.LOSSES (a test keeps them equal)
PASS_MODES = ("sequential", "mixed")
SCHEDULES = ("step", "cosine", "constant", "onecycle")
TEACHER_MODES = ("actors", "local")
STAGE_MODES = ("sequential", "concurrent", "auto")
EXECUTORS = ("auto", "task", "fit")
SOFT_LABELS = ("online", "cache")
CACHE_FORMATS = ("float16", "topk")
WANDB_MODES = ("online", "offline", "disabled")
# tracker section -> (module it imports, the extra that installs it)
TRACKER_PACKAGES = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
LOADERS = ("memory", "stream", "auto")


class ConfigError(ValueError):
    """A configuration problem, with the dotted field path in the message."""


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 integers, so `ratio: 1:1:1` stays the string '1:1:1'."""


def _construct_mapping(loader, node, deep=False):
    """A mapping that refuses a key given twice (PyYAML keeps the last one silently)."""
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def split_method(entry: str) -> tuple:
    """A `methods` entry as (method, loss): `ed+dkd` -> ("ed", "dkd"), `ed` -> ("ed", None)."""
    base, sep, loss = str(entry).partition("+")
    return base, (loss if sep else None)


@dataclass
class DataConfig:
    """`data`: where the images come from, how many, how they are grouped, decoded and fed."""
    source: str = "builtin"             # builtin (synthetic, from data.seed), a torchvision set, images, Parquet
    root: Optional[str] = None          # cifar10/100, imagefolder, caltech256, food101 root
    train_path: Optional[str] = None    # parquet: the training table (columns img{bytes,path}, label)
    test_path: Optional[str] = None     # parquet: the test table (same columns)
    download: bool = False              # torchvision datasets only (cifar10/100, caltech256, food101)
    num_classes: int = 30               # builtin: number of classes
    train_per_class: Optional[int] = None  # builtin: training images per class (null: the generator's default)
    test_per_class: Optional[int] = None   # builtin: test images per class (null: the generator's default)
    limit_per_class: Optional[int] = None  # cap on train images per class, for short runs
    val_fraction: float = 0.1           # held out from train for model selection
    ratio: Optional[str] = "1:1:1"      # class groups as contiguous ranges: floor(C/sum(r))*r_i, remainder to the last
    groups: Optional[list] = None       # explicit class lists, one per group (overrides ratio); >= 2 classes each
    image_size: Optional[int] = None    # side the networks see; null: 32 (builtin, cifar10/100) or 224 (photos)
    augment: Union[str, bool, None] = None  # cifar | imagenet | none; null: cifar (32 px sources) or imagenet
    seed: int = 0                       # fixes the data: built-in generation, validation split, soft-label bank
    cache_dir: Optional[str] = None     # decoded-image shards; None = <output.dir>/decoded (shared by runs and trials)
    loader: str = "memory"              # memory: decoded set in each worker | stream: Ray Data pipeline | auto
    memory_fraction: float = 0.25       # auto: stream when the decoded train set needs more of a worker's memory
    stream_prefetch: int = 4            # stream: batches each worker prefetches


@dataclass
class TeachersConfig:
    """`teachers`: the group teachers (and kd's all-class teacher): network, training, soft labels."""
    arch: str = "resnet20"              # a staged arch, or any classifier: tv:<torchvision name>, timm:<timm name>
    pretrained: Optional[str] = None    # weights name (IMAGENET1K_V2), timm tag, or local state_dict file
    # input mean/std: auto = the pretrained weights' own (timm pretrained_cfg, torchvision transforms) when
    # they record them, else the data's; data = the data's; or {mean: [r, g, b], std: [r, g, b]}
    normalize: Union[str, dict] = "auto"
    epochs: int = 10                    # teacher training epochs
    lr: float = 0.05                    # teacher SGD learning rate
    batch_size: int = 64                # teacher batch, global across workers (a multiple of ray.workers)
    schedule: str = "cosine"            # step | cosine | constant | onecycle (linear rise then fall, set every step)
    milestones: list = field(default_factory=lambda: [])  # epochs, for "step"
    warmup_fraction: float = 0.15       # onecycle: share of the epochs spent rising to lr
    label_smoothing: float = 0.0        # of the teachers' CE (smoothed teachers are known to distil worse)
    weight_decay: Optional[float] = None  # null: optimizer.weight_decay
    checkpoints: Optional[dict] = None  # {"group0": path, ..., "all": path}: load instead of training
    soft_labels: str = "online"         # online: teacher forward every step; cache: replay stored logits
    cache_draws: int = 8                # cache: augmentation draws per sample (epochs cycle through them)
    cache_format: str = "float16"       # cache: float16 (all logits) | topk (top-k values + indices)
    cache_topk: int = 5                 # cache_format topk: logits kept per (sample, draw)
    cache_dir: Optional[str] = None     # cache: None = <output.dir>/softlabels (shared by runs and trials)


@dataclass
class StudentConfig:
    """`student`: the staged network that ED grows grade by grade (and every baseline trains)."""
    arch: str = "resnet8"               # a staged arch (CIFAR or torchvision ImageNet-style)
    pretrained: Optional[str] = None    # torchvision weights name or local state_dict file: stem + blocks
    normalize: Union[str, dict] = "auto"  # input mean/std, as teachers.normalize


@dataclass
class CurriculumConfig:
    """`curriculum`: ED's grades (split points, heads, order, epochs) and the distillation mix."""
    splits: Optional[list] = None       # block index where each grade ends; last = all blocks
    head_widths: Union[int, list] = 64  # teaching reference head width (one, or one per grade but the last)
    head_relu: bool = True              # ReLU in the teaching reference head
    order: Optional[list] = None        # teacher-addition order: a permutation of group indices
    grade_epochs: Optional[list] = None # epochs per grade (0 before the last: no such grade); baselines train the sum
    # share of total_epochs per grade, instead of grade_epochs: sums to 1, the last above 0; an early share
    # of 0 leaves that fragment grade out (all early shares 0: no curriculum, the complete student throughout)
    grade_fractions: Optional[list] = None
    total_epochs: Optional[int] = None  # with grade_fractions: the fixed total the shares divide (whole epochs)
    pass_mode: str = "sequential"       # paper: one pass per group per epoch; or mixed batches
    temperature: float = 4.0            # KD temperature of every loss whose own block sets none
    alpha: Union[float, list] = 0.3     # weight of CE, (1 - alpha) the KD term's; one, or one per grade (baselines: the last)
    # ed's teacher signal: weight of the all-class teacher (kd's) on the logits of the classes seen so far,
    # against the group teachers' 1 - weight; 0: group teachers only (the paper), 1: the all-class teacher
    # only (ED's curriculum on KD's signal); one, or one per grade
    all_teacher_weight: Union[float, list] = 0.0
    carry_head_rows: bool = False       # copy old reference-head rows into the new head
    keep_momentum: bool = False         # keep SGD momentum of carried parameters at a grade switch
    bn_recalibrate: bool = False        # recompute BN statistics on a mixed pass of the grade before eval/save
    equal_images: bool = False          # ed: extend the last grade so ED sees as many images as a baseline


@dataclass
class KDLossConfig:
    """`distill.kd`: Hinton KD, T^2 * KL(softmax(t/T) || softmax(z/T))."""
    temperature: Optional[float] = None  # null: curriculum.temperature


@dataclass
class DKDLossConfig:
    """`distill.dkd`: decoupled KD (Zhao et al., CVPR 2022), alpha * TCKD + beta * NCKD."""
    alpha: float = 1.0                  # weight of TCKD (target vs non-target, binary KL)
    beta: float = 8.0                   # weight of NCKD (KL among the non-target classes)
    warmup: int = 20                    # epochs of linear warm-up of the loss weight: min(epoch/warmup, 1); 0 = none
    temperature: Optional[float] = None  # null: curriculum.temperature


@dataclass
class LSKDLossConfig:
    """`distill.lskd`: logit standardization (Sun et al., CVPR 2024), KD on z-scored logits."""
    temperature: Optional[float] = 2.0  # base temperature on z-scored logits; null: curriculum.temperature


@dataclass
class DistillConfig:
    """`distill`: the distillation loss of `methods` entries that name none, and each loss's parameters."""
    loss: str = "kd"                    # loss of every `methods` entry that does not name one (ed+dkd does)
    kd: KDLossConfig = field(default_factory=KDLossConfig)
    dkd: DKDLossConfig = field(default_factory=DKDLossConfig)
    lskd: LSKDLossConfig = field(default_factory=LSKDLossConfig)


@dataclass
class OptimizerConfig:
    """`optimizer`: the students' SGD and learning-rate schedule."""
    lr: float = 0.05                    # student SGD learning rate (peak, for onecycle)
    momentum: float = 0.9               # SGD momentum
    weight_decay: float = 5e-4          # SGD weight decay (also the teachers', unless teachers.weight_decay)
    batch_size: int = 64                # student batch, global across workers: a multiple of ray.workers, >= 2 each
    schedule: str = "cosine"            # step | cosine | constant | onecycle (linear rise then fall, set every step)
    milestones: list = field(default_factory=lambda: [])  # global epochs, for "step"
    warmup_fraction: float = 0.15       # onecycle: share of the epochs spent rising to lr
    gamma: float = 0.1                  # step: lr factor at each milestone
    restart_per_grade: bool = False     # restart the schedule at each grade (warm restarts)


@dataclass
class RayConfig:
    """`ray`: how a run is placed on Ray: workers, GPUs, teacher actors, failures, stages."""
    workers: int = 1                    # Ray Train workers (DDP over gloo or nccl) of each student fit
    use_gpu: bool = False               # Ray Train workers on GPUs (ray.gpus_per_worker each)
    cpus_per_worker: Optional[float] = None  # None: share this machine's cores (local), 1 on a cluster
    address: Optional[str] = None       # join this cluster (ray://head:10001, auto) instead of starting a local one
    teachers: str = "local"             # local: teachers in each worker; actors: teachers served as Ray actors
    teacher_cpus: float = 1.0           # CPUs of each teacher actor (ray.teachers: actors)
    teacher_gpus: float = 0.0           # fractions share a GPU, e.g. 0.2: four teachers + the student on one
    colocate_teachers: bool = False     # teacher actors on rank 0's node (soft: elsewhere if it has no room)
    gpus_per_worker: float = 1.0        # with use_gpu; a fraction (one worker only) leaves room for teacher actors
    teacher_resources: dict = field(default_factory=dict)  # custom resources per teacher actor, e.g. {teacher_node: 1}
    max_failures: int = 0               # worker restarts from the last epoch checkpoint (per stage when concurrent)
    sync_batchnorm: Optional[bool] = None    # one set of BN statistics over workers; null: on when workers > 1
    stages: str = "sequential"          # sequential: stages one after another; concurrent: each when its teachers exist; auto: by room
    teacher_workers: int = 1            # workers of each teacher's stage (concurrent stages)
    executor: str = "auto"              # per stage: auto (task for one worker, fit for several), task, fit


@dataclass
class OutputConfig:
    """`output`: where the run directory goes."""
    dir: str = "runs"                   # a local path (or a mount every node shares) or a storage URI: s3://bucket/runs
    name: Optional[str] = None          # run directory name; default: the experiment name


@dataclass
class MLflowConfig:
    """`tracking.mlflow`: log every epoch to MLflow, one MLflow run per stage."""
    tracking_uri: Optional[str] = None  # required: http://host:5000, file:/path/mlruns, sqlite:///mlflow.db
    experiment: Optional[str] = None    # MLflow experiment (created if missing); default: the experiment name


@dataclass
class WandbConfig:
    """`tracking.wandb`: log every epoch to Weights & Biases, one W&B run per stage."""
    project: Optional[str] = None       # default: the experiment name
    mode: str = "online"                # online | offline (files only, `wandb sync` later) | disabled


@dataclass
class TrackingConfig:
    """`tracking`: live metrics of every epoch (TensorBoard, MLflow, Weights & Biases)."""
    tensorboard: bool = True            # live event files in <run>/tensorboard/<stage>/, every epoch
    mlflow: Optional[MLflowConfig] = None   # null: off
    wandb: Optional[WandbConfig] = None     # null: off


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
        return _build(cls, raw, prefix="")

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "Experiment":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: not found")
        return cls.from_yaml_text(path.read_text(), source=str(path))

    @classmethod
    def from_yaml_text(cls, text: str, *, source: str) -> "Experiment":
        """An experiment from YAML text read from `source` (a file, or a storage URI: see cli)."""
        try:
            raw = load_yaml(text)
        except yaml.YAMLError as err:  # one line: where, and what the parser expected
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ConfigError(f"config file {source}: not valid YAML{where}: {what}") from None
        return cls.from_dict(raw or {}, source=source)

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
        raw = self.to_dict()
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. curriculum.temperature=2")
            node = raw
            parts = key.strip().split(".")
            cls = Experiment
            for depth, part in enumerate(parts[:-1]):
                hint = get_type_hints(cls).get(part) if is_dataclass(cls) else None
                cls = _optional_section(hint) or hint
                if node.get(part, 0) is None and _optional_section(hint):   # a section that is off: on, defaults
                    node[part] = dataclasses.asdict(cls())
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth + 1])} is not a section")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"override {item!r}: unknown field {key.strip()} "
                                  f"(valid here: {', '.join(node)})")
            node[parts[-1]] = load_yaml(value)
        return Experiment.from_dict(raw, source="overrides")

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> "Experiment":
        """Check every field that can be checked without data; raise ConfigError naming it."""
        from raydistill.models import num_blocks

        def need(ok: bool, path: str, expected: str, value: Any) -> None:
            if not ok:
                raise ConfigError(f"{path}: expected {expected}, got {value!r}")

        need(isinstance(self.methods, list) and len(self.methods) > 0, "methods",
             f"a non-empty list of {list(METHODS)}", self.methods)
        need(self.distill.loss in LOSSES, "distill.loss", f"one of {list(LOSSES)}", self.distill.loss)
        for m in self.methods:
            base, loss = split_method(m)
            need(isinstance(m, str) and base in METHODS and loss in (None, *LOSSES), "methods",
                 f"each one of {list(METHODS)}, or method+loss with a loss in {list(LOSSES)} (e.g. ed+dkd)", m)
            need(not (base == "scratch" and loss), "methods", "scratch without a loss (it trains with CE only)", m)
        resolved = [self.method_loss(m) for m in self.methods]
        need(len(set(resolved)) == len(resolved), "methods",
             f"no duplicates (an entry without +loss uses distill.loss: {self.distill.loss})", self.methods)
        self._validate_losses(need)
        need(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        from raydistill.distill.precision import PRECISIONS
        need(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}", self.precision)
        if self.device == "cpu":
            self.check_precision_on("cpu", "device")
        need(0 <= self.device_data_fraction <= 1, "device_data_fraction", "a number in [0, 1]",
             self.device_data_fraction)

        from raydistill.data.augment import PRESETS
        from raydistill.data.sources import SOURCES
        d = self.data
        need(d.source in SOURCES, "data.source", f"one of {list(SOURCES)}", d.source)
        need(0 <= d.val_fraction < 1, "data.val_fraction", "a number in [0, 1)", d.val_fraction)
        if d.source == "builtin":
            need(d.num_classes >= 2, "data.num_classes", "at least 2", d.num_classes)
        if d.source == "parquet":
            need(bool(d.train_path) and bool(d.test_path), "data.train_path/test_path",
                 "both Parquet paths for source parquet", (d.train_path, d.test_path))
        if d.source in ("cifar10", "cifar100", "imagefolder"):
            need(bool(d.root), "data.root", f"a directory for source {d.source}", d.root)
        for name in ("train_per_class", "test_per_class", "limit_per_class"):
            v = getattr(d, name)
            need(v is None or v >= 1, f"data.{name}", "a positive integer or null", v)
        need(d.loader in LOADERS, "data.loader", f"one of {list(LOADERS)}", d.loader)
        need(0 < d.memory_fraction <= 1, "data.memory_fraction", "a number in (0, 1]", d.memory_fraction)
        need(isinstance(d.stream_prefetch, int) and d.stream_prefetch >= 1, "data.stream_prefetch",
             "a positive integer", d.stream_prefetch)
        need(d.groups is not None or d.ratio, "data.ratio", "a ratio like 1:1:1 when data.groups is not set",
             d.ratio)
        need(d.image_size is None or (isinstance(d.image_size, int) and 8 <= d.image_size <= 1024), "data.image_size",
             "an integer side in 8..1024 pixels, or null (32 for builtin/cifar10/cifar100, 224 otherwise)", d.image_size)
        need(d.augment is None or isinstance(d.augment, bool) or d.augment in PRESETS, "data.augment",
             f"one of {list(PRESETS)} or null (cifar for builtin/cifar10/cifar100, imagenet otherwise)",
             d.augment)
        if self.augment_preset() == "cifar":
            need(self.image_size() > 8, "data.image_size", "more than 8 pixels for augment cifar (4-pixel pad crops)",
                 self.image_size())

        t = self.teachers
        self._validate_arch("teachers", staged=False)
        need(t.epochs >= 1, "teachers.epochs", "a positive integer", t.epochs)
        need(t.lr > 0, "teachers.lr", "a positive number", t.lr)
        need(t.batch_size >= 1, "teachers.batch_size", "a positive integer", t.batch_size)
        need(t.schedule in SCHEDULES, "teachers.schedule", f"one of {list(SCHEDULES)}", t.schedule)
        need(all(isinstance(m, int) and m > 0 for m in t.milestones), "teachers.milestones",
             "positive integer epochs", t.milestones)
        need(isinstance(t.warmup_fraction, (int, float)) and 0 <= t.warmup_fraction < 1, "teachers.warmup_fraction",
             "a number in [0, 1)", t.warmup_fraction)
        need(isinstance(t.label_smoothing, (int, float)) and 0 <= t.label_smoothing < 1, "teachers.label_smoothing",
             "a number in [0, 1)", t.label_smoothing)
        need(t.weight_decay is None or (isinstance(t.weight_decay, (int, float)) and t.weight_decay >= 0),
             "teachers.weight_decay", "null or a non-negative number", t.weight_decay)
        if t.checkpoints is not None:
            need(isinstance(t.checkpoints, dict), "teachers.checkpoints",
                 "a mapping like {group0: path, all: path}", t.checkpoints)
        need(t.soft_labels in SOFT_LABELS, "teachers.soft_labels", f"one of {list(SOFT_LABELS)}", t.soft_labels)
        need(isinstance(t.cache_draws, int) and 1 <= t.cache_draws <= 32767, "teachers.cache_draws",
             "an integer in 1..32767 (augmentation draws per sample)", t.cache_draws)
        need(t.cache_format in CACHE_FORMATS, "teachers.cache_format", f"one of {list(CACHE_FORMATS)}",
             t.cache_format)
        need(isinstance(t.cache_topk, int) and t.cache_topk >= 1, "teachers.cache_topk", "a positive integer",
             t.cache_topk)
        need(t.cache_dir is None or (bool(t.cache_dir) and "://" not in t.cache_dir), "teachers.cache_dir",
             "a local directory path or null (<output.dir>/softlabels)", t.cache_dir)

        self._validate_arch("student", staged=True)

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
        self._validate_grade_budget(need, k)
        need(c.pass_mode in PASS_MODES, "curriculum.pass_mode", f"one of {list(PASS_MODES)}", c.pass_mode)
        need(c.temperature > 0, "curriculum.temperature", "a positive number", c.temperature)
        for name in ("alpha", "all_teacher_weight"):
            values = self._per_grade(name)
            need(len(values) == k, f"curriculum.{name}", f"one number or {k} (one per grade)", getattr(c, name))
            for i, v in enumerate(values):
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                     f"curriculum.{name}" + (f"[{i}]" if isinstance(getattr(c, name), list) else ""),
                     "a number in [0, 1]", v)

        need(isinstance(self.test_every_epoch, bool), "test_every_epoch", "true or false", self.test_every_epoch)
        o = self.optimizer
        need(o.lr > 0, "optimizer.lr", "a positive number", o.lr)
        need(0 <= o.momentum < 1, "optimizer.momentum", "a number in [0, 1)", o.momentum)
        need(o.weight_decay >= 0, "optimizer.weight_decay", "a non-negative number", o.weight_decay)
        need(o.batch_size >= 1, "optimizer.batch_size", "a positive integer", o.batch_size)
        need(o.schedule in SCHEDULES, "optimizer.schedule", f"one of {list(SCHEDULES)}", o.schedule)
        need(isinstance(o.warmup_fraction, (int, float)) and 0 <= o.warmup_fraction < 1, "optimizer.warmup_fraction",
             "a number in [0, 1)", o.warmup_fraction)
        need(all(isinstance(m, int) and m > 0 for m in o.milestones), "optimizer.milestones",
             "positive integer epochs", o.milestones)
        need(0 < o.gamma <= 1, "optimizer.gamma", "a number in (0, 1]", o.gamma)

        r = self.ray
        need(r.workers >= 1, "ray.workers", "a positive integer", r.workers)
        need(r.teachers in TEACHER_MODES, "ray.teachers", f"one of {list(TEACHER_MODES)}", r.teachers)
        need(r.cpus_per_worker is None or r.cpus_per_worker > 0, "ray.cpus_per_worker", "a positive number or null",
             r.cpus_per_worker)
        need(r.max_failures >= 0, "ray.max_failures", "a non-negative integer", r.max_failures)
        need(r.stages in STAGE_MODES, "ray.stages", f"one of {list(STAGE_MODES)}", r.stages)
        need(r.executor in EXECUTORS, "ray.executor", f"one of {list(EXECUTORS)}", r.executor)
        need(r.executor != "task" or max(r.workers, r.teacher_workers) == 1, "ray.executor",
             "auto or fit with more than one worker (a task is one worker; DDP needs a Ray Train fit)", r.executor)
        need(isinstance(r.teacher_workers, int) and r.teacher_workers >= 1, "ray.teacher_workers",
             "a positive integer", r.teacher_workers)
        need(r.teacher_cpus >= 0 and r.teacher_gpus >= 0, "ray.teacher_cpus/teacher_gpus", "non-negative numbers",
             (r.teacher_cpus, r.teacher_gpus))
        need(r.gpus_per_worker > 0, "ray.gpus_per_worker", "a positive number", r.gpus_per_worker)
        need(r.workers == 1 or r.gpus_per_worker >= 1, "ray.gpus_per_worker",
             "at least 1 with more than one worker (nccl cannot run two ranks on one GPU)", r.gpus_per_worker)
        need(isinstance(r.teacher_resources, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in r.teacher_resources.items()),
            "ray.teacher_resources", "a mapping of resource name to a non-negative amount", r.teacher_resources)
        for field_path, batch in (("optimizer.batch_size", o.batch_size), ("teachers.batch_size", t.batch_size)):
            need(batch % r.workers == 0 and batch // r.workers >= 2, field_path,
                 f"a multiple of ray.workers ({r.workers}) with at least 2 samples per worker (BatchNorm)", batch)
        need(bool(self.output.dir), "output.dir", "a directory path", self.output.dir)
        self._validate_tracking(need)
        return self

    def _validate_grade_budget(self, need, k: int) -> None:
        """grade_epochs, or grade_fractions of total_epochs: one per grade, early grades may be 0, the
        last (the complete student) gets at least one epoch."""
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

    def _validate_arch(self, section: str, staged: bool) -> None:
        """`<section>.arch` names a buildable network and `<section>.pretrained` weights present on this
        machine (nothing is downloaded): checked here so a missing file fails before any work."""
        from raydistill.models import ARCHITECTURES, PretrainedError, check_arch
        cfg = getattr(self, section)
        kinds = f"one of {ARCHITECTURES}" + ("" if staged else ", tv:<torchvision model> or timm:<timm model>")
        if not isinstance(cfg.arch, str):
            raise ConfigError(f"{section}.arch: expected {kinds}, got {cfg.arch!r}")
        try:
            check_arch(cfg.arch, None, staged=staged)
        except PretrainedError as err:   # a tv:/timm: name that does not exist, timm missing
            raise ConfigError(f"{section}.arch: {err}") from None
        except ValueError:
            raise ConfigError(f"{section}.arch: expected {kinds}, got {cfg.arch!r}") from None
        if cfg.pretrained is not None:
            try:
                check_arch(cfg.arch, cfg.pretrained, staged=staged)
            except ValueError as err:
                raise ConfigError(f"{section}.pretrained: {err}") from None
        n = cfg.normalize
        ok = n in ("auto", "data") or (isinstance(n, dict) and set(n) == {"mean", "std"} and all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in n.values())
            and all(x > 0 for x in n["std"]))
        if not ok:
            raise ConfigError(f"{section}.normalize: expected auto, data or {{mean: [r, g, b], std: [r, g, b]}} "
                              f"(std positive), got {n!r}")
    def _validate_tracking(self, need) -> None:
        """Tracker settings, and their packages: a missing one fails here, naming the extra, not in a
        worker after the teachers trained."""
        import importlib.util
        tr = self.tracking
        if tr.mlflow is not None:
            need(isinstance(tr.mlflow.tracking_uri, str) and bool(tr.mlflow.tracking_uri.strip()),
                 "tracking.mlflow.tracking_uri", "the MLflow tracking URI (http://host:5000, file:/path/mlruns, "
                 "sqlite:///path/mlflow.db)", tr.mlflow.tracking_uri)
            need(tr.mlflow.experiment is None or bool(tr.mlflow.experiment), "tracking.mlflow.experiment",
                 "an MLflow experiment name or null (the experiment's name)", tr.mlflow.experiment)
        if tr.wandb is not None:
            need(tr.wandb.mode in WANDB_MODES, "tracking.wandb.mode", f"one of {list(WANDB_MODES)}", tr.wandb.mode)
            need(tr.wandb.project is None or bool(tr.wandb.project), "tracking.wandb.project",
                 "a W&B project name or null (the experiment's name)", tr.wandb.project)
        for section, (module, extra) in TRACKER_PACKAGES.items():
            if getattr(tr, section) is not None and importlib.util.find_spec(module) is None:
                raise ConfigError(f"tracking.{section}: the {module} package is not installed; "
                                  f"install it with pip install 'raydistill[{extra}]' (or set tracking.{section}: null)")

    def _validate_losses(self, need) -> None:
        """Each loss's parameter block, and the one combination the soft-label cache cannot serve."""
        for name in LOSSES:
            for key, value in dataclasses.asdict(getattr(self.distill, name)).items():
                path = f"distill.{name}.{key}"
                if key == "temperature":
                    need(value is None or value > 0, path, "a positive number or null (curriculum.temperature)", value)
                elif key == "warmup":
                    need(isinstance(value, int) and value >= 0, path, "a non-negative integer (epochs; 0 = none)",
                         value)
                else:
                    need(value >= 0, path, "a non-negative number", value)
        t = self.teachers
        if t.soft_labels == "cache" and t.cache_format == "topk":
            # top-k keeps k logits and one value for the rest, exact in softmax mass at curriculum.temperature
            # only: it serves kd at that temperature, and would silently distort any other loss
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
        from raydistill.data.sources import default_image_size
        d = self.data
        return int(d.image_size) if d.image_size is not None else default_image_size(d.source)

    def augment_preset(self) -> str:
        """data.augment as a preset name; null: cifar for the 32 px sources, imagenet for photographs;
        the booleans of older configs: true = cifar, false = none."""
        from raydistill.data.augment import preset_name
        from raydistill.data.sources import default_augment
        a = self.data.augment
        return default_augment(self.data.source) if a is None else preset_name(a)

    def method_loss(self, entry: str) -> tuple:
        """(method, distillation loss) of a `methods` entry; without `+loss` it is `distill.loss`."""
        base, loss = split_method(entry)
        return base, loss or self.distill.loss

    def loss_params(self) -> dict:
        """{loss: its configured parameters}, unset (null) ones left to the engine's defaults."""
        return {name: {k: v for k, v in dataclasses.asdict(getattr(self.distill, name)).items() if v is not None}
                for name in LOSSES}

    def num_groups(self) -> int:
        if self.data.groups is not None:
            if not isinstance(self.data.groups, list) or not self.data.groups:
                raise ConfigError(f"data.groups: expected a list of class lists, got {self.data.groups!r}")
            return len(self.data.groups)
        try:
            terms = [int(x) for x in str(self.data.ratio).split(":")]
        except ValueError:
            raise ConfigError(f"data.ratio: expected integers separated by ':' like 1:1:1, "
                              f"got {self.data.ratio!r}") from None
        if not terms or any(t <= 0 for t in terms):
            raise ConfigError(f"data.ratio: expected positive integers like 1:1:1, got {self.data.ratio!r}")
        return len(terms)

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


def _build(cls, raw: dict, prefix: str):
    """Build a dataclass from a mapping, rejecting unknown keys and wrongly-typed values."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (valid in {prefix.rstrip('.') or 'the top level'}: "
                          f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        value, hint, path = raw[f.name], hints[f.name], f"{prefix}{f.name}"
        section = _optional_section(hint)
        if section is not None:   # an optional section: null (off) or a mapping
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping) or null, got {value!r}")
            kwargs[f.name] = None if value is None else _build(section, value, prefix=path + ".")
        elif is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(hint, value, prefix=path + ".")
        else:
            kwargs[f.name] = _check_type(value, hint, path)
    return cls(**kwargs)


def _optional_section(hint):
    """The dataclass of an `Optional[SomeConfig]` field, else None."""
    if get_origin(hint) is not Union:
        return None
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and is_dataclass(args[0]) else None


def _check_type(value, hint, path):
    allowed = get_args(hint) if get_origin(hint) is Union else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return value
        t = get_origin(t) or t
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool, list, dict) and isinstance(value, t):
            return copy.deepcopy(value)
    if str in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. a ratio "2" read by YAML as a number
    names = " or ".join("null" if t is type(None) else getattr(get_origin(t) or t, "__name__", str(t))
                        for t in allowed)
    raise ConfigError(f"{path}: expected {names}, got {value!r}")
