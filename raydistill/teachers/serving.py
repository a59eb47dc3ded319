"""Preparing a frozen network for inference only: BatchNorm folded into the convolution before it.

A teacher never trains again, so its BN layers are a fixed affine map that can be folded into the
preceding convolution's weights: one kernel less per layer, same logits up to float rounding.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with every BatchNorm2d that directly follows a Conv2d folded
    into it (Sequential pairs, and the conv<i>/bn<i> pairs of post-activation basic and bottleneck
    blocks, CIFAR's and torchvision's). Pre-activation blocks (BN before conv) are left as they are."""
    model = copy.deepcopy(model).eval()

    def visit(module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
        elif type(module).__name__ in ("BasicBlock", "Bottleneck"):
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if _foldable(conv, bn):
                    setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(module, f"bn{i}", nn.Identity())
        for child in module.children():
            visit(child)

    visit(model)
    return model


def _foldable(conv, bn) -> bool:
    """A plain Conv2d followed by a plain BatchNorm2d (not a subclass such as timm's BatchNormAct2d,
    which also applies an activation that folding would drop)."""
    return isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d
