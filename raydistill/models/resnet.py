"""CIFAR ResNets (CRD / RepDistiller definitions) as stem + flat block list + head.

Blocks are flattened across the three stages so a student can grow one block
at a time (resnet20 -> 9 blocks, resnet110 -> 54).
"""
from __future__ import annotations

import torch
from torch import nn

from .staged import init_weights


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetHead(nn.Module):
    """Native head: global avg pool -> Linear (``fc``)."""

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# name -> (depth, stem channels, stage channels)
RESNET_SPECS = {
    "resnet8": (8, 16, (16, 32, 64)),
    "resnet14": (14, 16, (16, 32, 64)),
    "resnet20": (20, 16, (16, 32, 64)),
    "resnet32": (32, 16, (16, 32, 64)),
    "resnet44": (44, 16, (16, 32, 64)),
    "resnet56": (56, 16, (16, 32, 64)),
    "resnet110": (110, 16, (16, 32, 64)),
    "resnet8x4": (8, 32, (64, 128, 256)),
    "resnet32x4": (32, 32, (64, 128, 256)),
}


def resnet_block_plan(name: str) -> list[tuple[int, int, int]]:
    """(in_ch, out_ch, stride) for every block, in forward order."""
    depth, stem_ch, stages = RESNET_SPECS[name]
    assert (depth - 2) % 6 == 0, "depth should be 6n+2"
    n = (depth - 2) // 6
    plan, in_ch = [], stem_ch
    for stage, (out_ch, stride) in enumerate(zip(stages, (1, 2, 2))):
        for i in range(n):
            plan.append((in_ch, out_ch, stride if i == 0 else 1))
            in_ch = out_ch
    return plan


def resnet_parts(name: str, split: int):
    """Build (stem, first ``split`` blocks); init like the reference."""
    _, stem_ch, _ = RESNET_SPECS[name]
    stem = nn.Sequential(conv3x3(3, stem_ch), nn.BatchNorm2d(stem_ch), nn.ReLU())
    blocks = [BasicBlock(*p) for p in resnet_block_plan(name)[:split]]
    for m in [stem, *blocks]:
        init_weights(m)
    return stem, blocks


def resnet_head(name: str, num_classes: int) -> nn.Module:
    head = ResNetHead(RESNET_SPECS[name][2][-1], num_classes)
    init_weights(head)
    return head
