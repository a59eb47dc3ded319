"""What the code asks of torch against the oldest torch pyproject declares (`torch>=X`).

A keyword that only newer torch knows passes every test on the installed torch and breaks every
multi-worker run on the floor version with a TypeError; these tests build the DDP wrapper
against the floor's recorded DistributedDataParallel signature, so such a call fails here."""
from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# DistributedDataParallel.__init__'s parameters, read from torch/nn/parallel/distributed.py of the
# torch-2.4.1 wheel (no `forward_sync_buffers`, added in 2.13; `broadcast_buffers` is there). Moving
# the floor: record that version's signature here.
DDP_PARAMETERS = {
    (2, 4): ("module", "device_ids", "output_device", "dim", "broadcast_buffers", "process_group",
             "bucket_cap_mb", "find_unused_parameters", "check_reduction", "gradient_as_bucket_view",
             "static_graph", "delay_all_reduce_named_params", "param_to_hook_all_reduce",
             "mixed_precision", "device_mesh"),
}


def declared_floor(package: str) -> tuple:
    """(major, minor) of `package>=X.Y` in pyproject's dependencies."""
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(rf'"{re.escape(package)}(\[[^\]]*\])?>=(\d+)\.(\d+)', text)
    assert found, f"pyproject.toml declares no floor for {package}"
    return int(found.group(2)), int(found.group(3))


def _ddp_with_signature(parameters: tuple):
    """A stand-in for DistributedDataParallel whose constructor takes exactly `parameters` (as
    that torch's does: an unknown keyword is a TypeError); records the keywords it was given."""
    class FakeDDP(torch.nn.Module):
        calls = []

        def __init__(self, module, **kwargs):
            super().__init__()
            unknown = sorted(set(kwargs) - set(parameters))
            if unknown:
                raise TypeError(f"DistributedDataParallel.__init__() got an unexpected keyword argument {unknown[0]!r}")
            self.module = module
            FakeDDP.calls.append(kwargs)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    FakeDDP.__init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", kind)] + [inspect.Parameter(p, kind, default=None) for p in parameters])
    return FakeDDP


def _wrap_two_rank_cpu_model(monkeypatch, ddp_class):
    import torch.nn.parallel
    import torch.nn.parallel.distributed
    from raydistill.distributed.consistency import ddp_context
    monkeypatch.setattr(torch.nn.parallel.distributed, "DistributedDataParallel", ddp_class)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", ddp_class)
    ctx = ddp_context(torch.device("cpu"), 0, 2, sync_batchnorm=False)
    return ctx.wrap_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))


def test_the_recorded_ddp_signature_is_the_declared_floors():
    """The signature the next test builds against belongs to the torch pyproject promises."""
    assert declared_floor("torch") in DDP_PARAMETERS, (
        f"pyproject's torch floor {declared_floor('torch')} has no recorded DDP signature in this test")


def test_ddp_wrapper_uses_only_keywords_the_floor_torch_accepts(monkeypatch):
    """On the floor torch (2.4: no `forward_sync_buffers`) the wrapper turns the per-forward
    buffer broadcast off with the keyword that version has; before the fix it passed
    `forward_sync_buffers=False` unconditionally, a TypeError on torch 2.4-2.12."""
    floor = _ddp_with_signature(DDP_PARAMETERS[declared_floor("torch")])
    _wrap_two_rank_cpu_model(monkeypatch, floor)
    assert floor.calls == [{"device_ids": None, "broadcast_buffers": False}]


def test_ddp_wrapper_on_the_installed_torch_uses_its_current_keyword(monkeypatch):
    """On a torch that has `forward_sync_buffers` (>= 2.13) the wrapper uses it, not the keyword
    torch deprecates there."""
    from torch.nn.parallel.distributed import DistributedDataParallel
    installed = tuple(inspect.signature(DistributedDataParallel.__init__).parameters)[1:]
    if "forward_sync_buffers" not in installed:
        pytest.skip(f"torch {torch.__version__} predates forward_sync_buffers")
    current = _ddp_with_signature(installed)
    _wrap_two_rank_cpu_model(monkeypatch, current)
    assert current.calls == [{"device_ids": None, "forward_sync_buffers": False}]


def test_real_ddp_is_built_without_error_or_deprecation(tmp_path):
    """The installed torch's real DDP (a one-process gloo group) accepts the wrapper's keywords,
    warns nothing, and broadcasts no buffers at forward."""
    import torch.distributed as dist
    from raydistill.distributed.consistency import ddp_context
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ctx = ddp_context(torch.device("cpu"), 0, 2, sync_batchnorm=False)   # wraps as for 2 ranks
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            wrapped = ctx.wrap_model(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", None)) is False
        wrapped(torch.randn(2, 3, 8, 8)).sum().backward()
    finally:
        dist.destroy_process_group()
