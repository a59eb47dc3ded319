"""The two networks' sections, `teachers` and `student`, and the checks they share: an architecture
that builds, pretrained weights present on this machine, an input normalization."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from raydistill.config.errors import ConfigError, need
from raydistill.config.optimizer import SCHEDULES

SOFT_LABELS = ("online", "cache")
CACHE_FORMATS = ("float16", "topk")


def check_network(section: str, cfg, staged: bool) -> None:
    """`<section>.arch` names a buildable network and `<section>.pretrained` weights present on this
    machine (nothing is downloaded): checked here so a missing file fails before any work."""
    from raydistill.models import ARCHITECTURES, PretrainedError, check_arch
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

    def check(self) -> None:
        """The section's own fields (the batch against ray.workers, and a top-k cache against the
        methods' losses, are Experiment's)."""
        t = self
        check_network("teachers", t, staged=False)
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


@dataclass
class StudentConfig:
    """`student`: the staged network that ED grows grade by grade (and every baseline trains)."""
    arch: str = "resnet8"               # a staged arch (CIFAR or torchvision ImageNet-style)
    pretrained: Optional[str] = None    # torchvision weights name or local state_dict file: stem + blocks
    normalize: Union[str, dict] = "auto"  # input mean/std, as teachers.normalize

    def check(self) -> None:
        """The section's own fields (its blocks against curriculum.splits are Experiment's)."""
        check_network("student", self, staged=True)
