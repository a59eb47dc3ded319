"""Any classification network as a (teacher) model: ``tv:<torchvision name>`` or ``timm:<timm name>``.

Teachers need not be staged: they are only ever trained whole and served. The engine, teacher
checkpoints and serving need two things of a model beyond forward(): its `arch` (to rebuild it)
and its `class_ids` buffer (which global class each output is); `Classifier` adds them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .pretrained import PretrainedError, check_timm, check_torchvision_pretrained, load_torchvision_pretrained, \
    timm_classifier
from .torchvision_nets import torchvision_classifier

TORCHVISION_PREFIX, TIMM_PREFIX = "tv:", "timm:"


class Classifier(nn.Module):
    """``net(x)`` plus `arch` and `class_ids` (global class of output ``j``)."""

    def __init__(self, net: nn.Module, arch: str, num_classes: int):
        super().__init__()
        self.net = net
        self.arch = arch
        self.register_buffer("class_ids", torch.arange(num_classes, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return int(self.class_ids.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}"


def is_classifier_arch(arch) -> bool:
    """`arch` names an unstaged classifier (``tv:…`` or ``timm:…``)."""
    return isinstance(arch, str) and arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX))


def torchvision_classifiers() -> list:
    import torchvision  # here, not at module level: its import (~1.5 s, torch._dynamo) would slow every worker start
    return torchvision.models.list_models(module=torchvision.models)


def check_classifier(arch: str, pretrained: Optional[str] = None) -> None:
    """Raise PretrainedError unless `arch` can be built (and its weights found) without network."""
    if arch.startswith(TIMM_PREFIX):
        check_timm(arch.removeprefix(TIMM_PREFIX), pretrained)
        return
    name = arch.removeprefix(TORCHVISION_PREFIX)
    if name not in torchvision_classifiers():
        raise PretrainedError(f"unknown torchvision classification model {name!r} "
                              f"(torchvision.models.list_models(module=torchvision.models) lists them)")
    if pretrained is not None:
        check_torchvision_pretrained(name, pretrained)


def build_classifier(arch: str, num_classes: int, pretrained: Optional[str] = None) -> Classifier:
    """The classifier `arch` with `num_classes` outputs, its backbone from `pretrained` when given."""
    check_classifier(arch, pretrained)
    if arch.startswith(TIMM_PREFIX):
        net = timm_classifier(arch.removeprefix(TIMM_PREFIX), num_classes, pretrained)
    else:
        name = arch.removeprefix(TORCHVISION_PREFIX)
        net = torchvision_classifier(name, num_classes)
        if pretrained is not None:
            load_torchvision_pretrained(net, name, pretrained)
    return Classifier(net, arch, num_classes)
