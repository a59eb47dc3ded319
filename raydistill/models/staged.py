"""Staged networks for Education Distillation.

A network is split into ``stem`` + a flat ``blocks`` sequence + ``head`` so that
a fragment (the first ``split`` blocks) names its parameters exactly like the
complete network (``blocks.0.…``); growing a student is then a name/shape
match (:func:`carry_over`).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

# Heads whose weight rows are indexed by output position (= class_ids); they are
# only copied wholesale when both models map positions to the same classes.
_CLASS_INDEXED_PREFIXES = ("head.classifier.", "head.fc.")
_ROWS_NAME = "head.classifier.weight[rows]"


def init_weights(module: nn.Module, zero_linear_bias: bool = False) -> None:
    """Reference (CRD/RepDistiller) init: kaiming fan-out convs, BN = (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and zero_linear_bias and m.bias is not None:
            nn.init.zeros_(m.bias)


class ReferenceHead(nn.Module):
    """Teaching reference head for a fragment: 1x1 conv -> BN -> (ReLU) -> pool -> Linear.

    Names (``proj``/``norm``/``classifier``) differ from native heads (``bn``/``fc``)
    on purpose, so a reference head never leaks weights into a native head.
    """

    def __init__(self, in_ch: int, num_classes: int, width: int = 64, relu: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, width, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.norm(self.proj(x))))
        return self.classifier(torch.flatten(x, 1))


class StagedModel(nn.Module):
    """``head(blocks(stem(x)))``; ``class_ids[j]`` is the global class of output ``j``."""

    def __init__(self, stem: nn.Module, blocks: Iterable[nn.Module], head: nn.Module,
                 arch: str, num_classes: int):
        super().__init__()
        self.stem = stem
        self.blocks = blocks if isinstance(blocks, nn.Sequential) else nn.Sequential(*blocks)
        self.head = head
        self.arch = arch
        self.split = len(self.blocks)
        self.register_buffer("class_ids", torch.arange(num_classes, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return int(self.class_ids.numel())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block (input of the head)."""
        return self.blocks(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, split={self.split}, num_classes={self.num_classes}"


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def _same_class_map(src: nn.Module, dst: nn.Module) -> bool:
    s, d = getattr(src, "class_ids", None), getattr(dst, "class_ids", None)
    if s is None or d is None:
        return s is None and d is None
    return s.shape == d.shape and torch.equal(s.cpu(), d.cpu())


@torch.no_grad()
def carry_over(src: nn.Module, dst: nn.Module, carry_head_rows: bool = False) -> list[str]:
    """Copy into ``dst`` every param/buffer of ``src`` with the same name and shape.

    ``class_ids`` is never copied. A head's other layers are copied only all together (a
    ReferenceHead's ``norm`` never lands on a new ``proj``). Class-indexed head layers (``head.classifier.*``,
    ``head.fc.*``) are copied wholesale only if both models have identical
    ``class_ids`` (same shape alone could silently permute classes). With
    ``carry_head_rows`` and two ReferenceHeads, classifier rows of class ids
    present in both models are copied position-to-position. Returns sorted names.
    """
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    same_map = _same_class_map(src, dst)

    def fits(name: str) -> bool:
        return name in src_sd and src_sd[name].shape == dst_sd[name].shape

    # a head's feature layers (e.g. proj -> norm) work only as a unit: BN statistics of the old
    # projection describe nothing on top of a new one
    head_parts = [n for n in dst_sd if n.startswith("head.") and not n.startswith(_CLASS_INDEXED_PREFIXES)]
    head_fits = all(fits(n) for n in head_parts)
    copied = []
    for name, d in dst_sd.items():
        if name == "class_ids" or name.endswith(".class_ids"):
            continue
        if not fits(name):
            continue
        s = src_sd[name]
        if name.startswith(_CLASS_INDEXED_PREFIXES) and not same_map:
            continue
        if name in head_parts and not head_fits:
            continue
        d.copy_(s)
        copied.append(name)

    if carry_head_rows and _ROWS_NAME.split("[")[0] not in copied:
        rows = _carry_rows(src, dst, set(copied))
        if rows:
            copied.append(_ROWS_NAME)
    return sorted(copied)


def _carry_rows(src: nn.Module, dst: nn.Module, copied: set) -> int:
    """Copy classifier rows for shared class ids; returns how many rows were copied."""
    sh, dh = getattr(src, "head", None), getattr(dst, "head", None)
    if not (isinstance(sh, ReferenceHead) and isinstance(dh, ReferenceHead)):
        return 0
    if sh.classifier.in_features != dh.classifier.in_features:
        return 0
    # Rows only make sense on top of the same features, i.e. the rest of the head carried.
    rest = [n for n in dst.state_dict() if n.startswith("head.") and not n.startswith("head.classifier.")]
    if not all(n in copied for n in rest):
        return 0
    s_ids, d_ids = src.class_ids.tolist(), dst.class_ids.tolist()
    s_pos = {c: i for i, c in enumerate(s_ids)}
    pairs = [(s_pos[c], j) for j, c in enumerate(d_ids) if c in s_pos]
    if not pairs:
        return 0
    si = torch.tensor([p[0] for p in pairs], device=sh.classifier.weight.device)
    di = torch.tensor([p[1] for p in pairs], device=dh.classifier.weight.device)
    dh.classifier.weight[di] = sh.classifier.weight[si].to(dh.classifier.weight)
    if sh.classifier.bias is not None and dh.classifier.bias is not None:
        dh.classifier.bias[di] = sh.classifier.bias[si].to(dh.classifier.bias)
    return len(pairs)
