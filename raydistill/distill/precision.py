"""Numeric precision of forward passes: fp32, or bf16/fp16 autocast (mixed precision).

One `Precision` per training context carries the autocast dtype and, for fp16, a GradScaler (fp16
gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none). Teachers
use the same object for their inference-only forwards. Logits leave `forward` as float32, so the
losses are computed in fp32 whatever the precision (autocast would upcast softmax and
cross-entropy anyway). fp32 adds nothing to the step: the same ops as without this module.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast (and, for fp16 training, loss scaling) on one device."""

    def __init__(self, name: str = "fp32", device="cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {name!r}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = PRECISIONS[name]
        self._scaler = None

    def autocast(self):
        """The autocast context of this precision (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`model(x)` under autocast; float32 output."""
        if self.dtype is None:
            return model(x)
        with self.autocast():
            out = model(x)
        return out.float()

    @property
    def scaler(self):
        """The GradScaler of fp16 training (created on first use), else None."""
        if self.name == "fp16" and self._scaler is None:
            self._scaler = torch.amp.GradScaler(self.device.type)
        return self._scaler

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """zero_grad, backward, optimizer step; scaled (skipping steps with inf/nan grads) for fp16."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        if scaler is None:
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, {str(self.device)!r})"
