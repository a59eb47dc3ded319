"""One model across DDP ranks: BatchNorm statistics, wrapping, and teachers every rank agrees on.

DDP keeps parameters equal on every rank, but not BatchNorm's running statistics: each rank
updates them from its own share of the global batch. Evaluation is sharded over ranks and rank 0
saves the checkpoint, so without this module a reported accuracy would mix slightly different
models and describe none of them exactly.

- GPU (nccl): `ray.sync_batchnorm` converts BatchNorm to `SyncBatchNorm` (`convert_sync_batchnorm`:
  every layer keeps its forward, timm's BatchNorm+activation layers included), so training
  normalises with the statistics of the whole global batch and running statistics agree.
- CPU (gloo): torch's SyncBatchNorm refuses CPU tensors. Each rank then normalises its own
  batch in training (as without sync), keeps its own running statistics (DDP's buffer broadcast
  off), and at the end of every epoch — before evaluation, checkpoint and save — the running
  means and variances are averaged over ranks. The mean is then exactly the EMA over all ranks'
  batches; the variance is the average of per-rank batch variances, which leaves out the spread
  of the per-rank batch means (small when the shards are random draws of the same classes).

Needs an initialised torch.distributed process group (Ray Train sets it up); no Ray import.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from raydistill.distill.engine import TrainContext

_RUNNING = ("running_mean", "running_var")


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running mean and variance tensors of every BatchNorm layer (SyncBatchNorm included)."""
    return [getattr(m, name) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for name in _RUNNING if getattr(m, name, None) is not None]


@torch.no_grad()
def average_batchnorm_statistics(model: nn.Module, world_size: int) -> None:
    """Replace every rank's BN running statistics by their average over ranks (one all-reduce)."""
    buffers = batchnorm_buffers(model)
    if world_size == 1 or not buffers:
        return
    flat = torch.cat([b.detach().flatten().double() for b in buffers])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def state_fingerprint(model: nn.Module) -> str:
    """sha256 of every tensor of the state_dict (names, dtypes and bytes), for comparing ranks."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_PLAIN_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _converter() -> tuple[Callable, tuple]:
    """(converter of one layer, the exact layer types it converts without changing what they compute).
    timm's converter when timm is installed: its BatchNormAct2d (BatchNorm + activation + drop in one
    layer, timm's EfficientNet/MobileNetV3/RegNet...) becomes SyncBatchNormAct, which still applies
    them; torch's converter would make it a plain SyncBatchNorm that never calls its activation."""
    try:
        from timm.layers import BatchNormAct2d, convert_sync_batchnorm as timm_convert
    except ImportError:
        return nn.SyncBatchNorm.convert_sync_batchnorm, _PLAIN_BATCHNORM
    return timm_convert, _PLAIN_BATCHNORM + (BatchNormAct2d,)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with its BatchNorm layers synchronised over ranks, children replaced in place (the
    root is returned, converted only if it is itself a BatchNorm layer). Every layer keeps its
    forward: plain BatchNorm and timm's BatchNormAct2d are converted (timm's converter when timm
    is installed, torch's otherwise); any other BatchNorm subclass (e.g. timm's SplitBatchNorm2d,
    a user's own) is left as it is, since both converters would replace its forward by plain
    BatchNorm's; its running statistics are still averaged over ranks after every epoch."""
    convert, exact = _converter()

    def visit(module: nn.Module) -> nn.Module:
        if type(module) in exact:
            return convert(module)
        for name, child in module.named_children():
            replaced = visit(child)
            if replaced is not child:
                module.add_module(name, replaced)
        return module
    return visit(model)


def ddp_context(device: torch.device, rank: int, world_size: int, sync_batchnorm: bool,
                **context) -> TrainContext:
    """The engine's TrainContext for one DDP rank (process group already initialised); `context`:
    the experiment's other TrainContext fields (`Experiment.context_options()`)."""
    from torch.nn.parallel import DistributedDataParallel

    def wrap(model: nn.Module) -> nn.Module:
        if world_size == 1:
            return model
        if sync_batchnorm and device.type == "cuda":
            # in place for a StagedModel (its children are replaced), so the unwrapped model that
            # is evaluated and saved holds the same layers
            model = convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       **no_forward_buffer_sync())

    def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        if world_size > 1:
            dist.all_reduce(t)
        return t

    return TrainContext(device=device, rank=rank, world_size=world_size, wrap_model=wrap,
                        all_reduce_sum=all_reduce_sum, **context,
                        sync_statistics=lambda model: average_batchnorm_statistics(model, world_size))


def broadcast_state(model: nn.Module, world_size: int) -> nn.Module:
    """Overwrite every rank's parameters and buffers with rank 0's (in place); returns the model."""
    if world_size > 1:
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    return model


def same_teacher_on_every_rank(teacher, world_size: int, rebuild: Callable):
    """After a teacher stage: every rank serves rank 0's weights (the ones saved, cached and reloaded
    on resume). `rebuild(model)` makes the serving object (e.g. a FrozenTeacher) again, since its
    inference copy (BatchNorm folded) was made from this rank's weights."""
    if world_size == 1:
        return teacher
    broadcast_state(teacher.model, world_size)
    return rebuild(teacher.model)


def plain_model(model: nn.Module) -> nn.Module:
    """The same network with plain BatchNorm layers (undoes SyncBatchNorm for serving and folding)."""
    from raydistill.models import build_model
    if not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
        return model
    plain = build_model(model.arch, model.num_classes).to(next(model.parameters()).device)
    plain.load_state_dict(model.state_dict())
    return plain


def no_forward_buffer_sync() -> dict:
    """DDP's keyword that turns off broadcasting buffers from rank 0 at every forward, for the
    installed torch: `forward_sync_buffers=False` where DDP has it (torch >= 2.13), else
    `broadcast_buffers=False` (torch 2.4-2.12 know only that one; from 2.13 it is deprecated).
    Either way each rank keeps its own running statistics until `average_batchnorm_statistics`.
    The old keyword also skips the buffers' broadcast when DDP is built; every rank builds or
    loads the same buffers there, so the two agree. Asks torch's own class (not a name a test
    may have replaced)."""
    import inspect
    from torch.nn.parallel import distributed
    accepted = inspect.signature(distributed.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in accepted else {"broadcast_buffers": False}
