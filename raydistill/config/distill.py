"""What is distilled and with which loss: the `methods` names, and the `distill` section (the loss of
entries that name none, and each loss's parameters)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from raydistill.config.errors import need

METHODS = ("ed", "scratch", "kd", "multi_teacher")
LOSSES = ("kd", "dkd", "lskd")          # = raydistill.distill.losses.LOSSES (a test keeps them equal)


def split_method(entry: str) -> tuple:
    """A `methods` entry as (method, loss): `ed+dkd` -> ("ed", "dkd"), `ed` -> ("ed", None)."""
    base, sep, loss = str(entry).partition("+")
    return base, (loss if sep else None)


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

    def check(self) -> None:
        """The default loss, and each loss's parameter block (one rule per kind of parameter)."""
        need(self.loss in LOSSES, "distill.loss", f"one of {list(LOSSES)}", self.loss)
        for name in LOSSES:
            for key, value in dataclasses.asdict(getattr(self, name)).items():
                path = f"distill.{name}.{key}"
                if key == "temperature":
                    need(value is None or value > 0, path, "a positive number or null (curriculum.temperature)", value)
                elif key == "warmup":
                    need(isinstance(value, int) and value >= 0, path, "a non-negative integer (epochs; 0 = none)",
                         value)
                else:
                    need(value >= 0, path, "a non-negative number", value)
