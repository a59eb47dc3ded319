"""CIFAR Wide ResNets (CRD / RepDistiller definitions) as stem + flat block list + head.

Blocks are pre-activation, so a block's output is a raw residual sum; the native
head therefore starts with BN -> ReLU (``head.bn``) before pooling.
"""
from __future__ import annotations

import torch
from torch import nn

from .staged import init_weights


class WideBasicBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv x2); 1x1 conv shortcut on the
    activated input when in/out channels differ (as in the reference). Dropout 0."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_ch == out_ch
        self.conv_shortcut = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        shortcut = x if self.equal_in_out else self.conv_shortcut(act)
        return out + shortcut


class WRNHead(nn.Module):
    """Native head: BN -> ReLU -> global avg pool -> Linear (``bn``, ``fc``)."""

    def __init__(self, in_ch: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(x))), 1))


# name -> (depth, widen factor)
WRN_SPECS = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


def wrn_block_plan(name: str) -> list[tuple[int, int, int]]:
    """(in_ch, out_ch, stride) for every block, in forward order."""
    depth, k = WRN_SPECS[name]
    assert (depth - 4) % 6 == 0, "depth should be 6n+4"
    n = (depth - 4) // 6
    plan, in_ch = [], 16
    for out_ch, stride in zip((16 * k, 32 * k, 64 * k), (1, 2, 2)):
        for i in range(n):
            plan.append((in_ch, out_ch, stride if i == 0 else 1))
            in_ch = out_ch
    return plan


def wrn_parts(name: str, split: int):
    """Build (stem, first ``split`` blocks); stem is a bare 3x3 conv as in the reference."""
    stem = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
    blocks = [WideBasicBlock(*p) for p in wrn_block_plan(name)[:split]]
    for m in [stem, *blocks]:
        init_weights(m)
    return stem, blocks


def wrn_head(name: str, num_classes: int) -> nn.Module:
    head = WRNHead(64 * WRN_SPECS[name][1], num_classes)
    init_weights(head, zero_linear_bias=True)
    return head
