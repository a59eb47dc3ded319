"""ImageNet-style staged students cut out of torchvision's own models.

torchvision builds the network (its code, its initialisation, its weights); this module only
regroups the built modules into stem + one block per residual / inverted-residual block + native
head, so fragments, reference heads and carry-over work as for the CIFAR nets. The modules are
torchvision's, so a complete network has exactly the parameters of torchvision's model.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
from torch import nn

TORCHVISION_STUDENTS = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
                        "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")


class PooledHead(nn.Module):
    """A torchvision classifier's native head: [last 1x1 conv] -> global avg pool -> classifier.

    The classifier keeps torchvision's attribute name (``fc`` for ResNets, ``classifier`` for
    MobileNet/EfficientNet, dropout included) so state_dict names stay recognisable."""

    def __init__(self, conv: Optional[nn.Module], classifier: nn.Module, classifier_name: str):
        super().__init__()
        self.conv = conv if conv is not None else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier_name = classifier_name
        setattr(self, classifier_name, classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.conv(x)), 1)
        return getattr(self, self.classifier_name)(x)


def torchvision_classifier(arch: str, num_classes: int) -> nn.Module:
    """torchvision's model `arch` (random weights, torchvision's init) with `num_classes` outputs."""
    import torchvision  # here, not at module level: its import (~1.5 s, torch._dynamo) would slow every worker start
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def slice_torchvision(model: nn.Module) -> tuple[nn.Module, list, PooledHead]:
    """(stem, blocks, head) made of `model`'s own modules, in forward order."""
    if hasattr(model, "layer1"):    # ResNet / WideResNet: conv-bn-relu-maxpool, 4 stages of blocks, avgpool-fc
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
        return stem, blocks, PooledHead(None, model.fc, "fc")
    # MobileNet / EfficientNet: features = [stem conv, blocks (EfficientNet: grouped in stages), last conv]
    features = list(model.features)
    blocks = []
    for m in features[1:-1]:
        blocks.extend(m if type(m) is nn.Sequential else [m])
    return features[0], blocks, PooledHead(features[-1], model.classifier, "classifier")


@lru_cache(maxsize=None)
def torchvision_block_channels(arch: str) -> tuple:
    """Output channels of each block: its last BatchNorm's width (built on the meta device: no memory)."""
    with torch.device("meta"):
        _, blocks, _ = slice_torchvision(torchvision_classifier(arch, 10))
    return tuple([m for m in b.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features for b in blocks)


def to_torchvision(model: nn.Module) -> nn.Module:
    """A complete staged torchvision-family network as torchvision's own model with the same weights
    (an export, and the reference for a plain torchvision loop): the staged modules are torchvision's,
    registered in torchvision's order, so the state_dicts match entry by entry."""
    plain = torchvision_classifier(model.arch, model.num_classes) if model.arch in TORCHVISION_STUDENTS else None
    ours = [v for k, v in model.state_dict().items() if k != "class_ids"]
    names = list(plain.state_dict()) if plain is not None else []
    if not isinstance(model.head, PooledHead) or len(ours) != len(names) or any(
            v.shape != t.shape for v, t in zip(ours, plain.state_dict().values())):
        raise ValueError(f"to_torchvision: {model.arch} with {model.split} blocks is not the complete network "
                         f"of one of {list(TORCHVISION_STUDENTS)}")
    plain.load_state_dict(dict(zip(names, ours)))
    return plain.to(next(model.parameters()).device)
