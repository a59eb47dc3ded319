"""Two DDP ranks (gloo, torch.multiprocessing, no Ray) end with ONE model: the engine's seam as the
Ray workers use it (`ddp_context`), BatchNorm statistics included, and teachers every rank serves."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from raydistill.data import ImageSet


def _data(n_per_class: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    # class-dependent brightness, so the model learns something and BN statistics move
    images = (torch.rand(len(labels), 3, 16, 16, generator=g) * 120 + labels.view(-1, 1, 1, 1) * 40).to(torch.uint8)
    return ImageSet(images, labels, [f"c{i}" for i in range(4)])


def _start(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)


def _train(ctx):
    from raydistill.distill.curriculum import plan_single_grade
    from raydistill.distill.engine import TrainSettings, train_plan
    s = TrainSettings(lr=0.1, batch_size=16, schedule="constant", augment=False)
    train, test = _data(24, 0).subset(torch.arange(95)), _data(10, 1)     # 95: one rank gets a padded copy
    plan = plan_single_grade("scratch", "resnet8", 3, [[0, 1], [2, 3]], 2)
    return train_plan(plan, train, test, test, None, s, ctx)


def _train_rank(rank: int, world: int, tmp: str) -> None:
    from raydistill.distributed.consistency import ddp_context, state_fingerprint
    _start(rank, world, tmp)
    ctx = ddp_context(torch.device("cpu"), rank, world, sync_batchnorm=True, channels_last=False)
    model, history = _train(ctx)
    out = {"fingerprint": state_fingerprint(model), "reported": history[-1]["test_acc"],
           "train_images": [h["train_images"] for h in history]}
    torch.save(model.state_dict(), Path(tmp) / f"model{rank}.pt")
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    torch.distributed.destroy_process_group()


@pytest.mark.slow   # two DDP ranks in two processes
def test_two_ddp_ranks_end_with_one_model_whose_accuracy_is_reported(tmp_path):
    from raydistill.distill.engine import TrainSettings, evaluate
    from raydistill.models import build_model
    mp.start_processes(_train_rank, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"], "the ranks' states differ (BN running statistics)"
    # rank 0's model (what is saved) evaluated in one process reproduces the sharded, reported accuracy
    model = build_model("resnet8", 4)
    model.load_state_dict(torch.load(tmp_path / "model0.pt", weights_only=True))
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in bn), "BN never trained"
    accuracy = evaluate(model, _data(10, 1), range(4), TrainSettings(augment=False), _plain_context())
    assert accuracy == ranks[0]["reported"] == ranks[1]["reported"]
    # 2 workers vs 1 worker: the same samples are counted (padding is not), the same epochs run
    _, single = _train(_plain_context())
    assert ranks[0]["train_images"] == [h["train_images"] for h in single] == [95, 95]


def _plain_context():
    from raydistill.distill.engine import TrainContext
    return TrainContext(channels_last=False)


def _teacher_rank(rank: int, world: int, tmp: str) -> None:
    from raydistill.distributed.consistency import same_teacher_on_every_rank, state_fingerprint
    from raydistill.models import build_model
    from raydistill.teachers import FrozenTeacher
    _start(rank, world, tmp)
    torch.manual_seed(100 + rank)       # every rank starts with different weights and BN buffers
    model = build_model("resnet8", 2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    teacher = FrozenTeacher(model, (0.5,) * 3, (0.25,) * 3)
    teacher = same_teacher_on_every_rank(teacher, world, lambda m: FrozenTeacher(m, (0.5,) * 3, (0.25,) * 3))
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Path(tmp, f"teacher{rank}.json").write_text(json.dumps(
        {"fingerprint": state_fingerprint(teacher.model), "logits": teacher(images).tolist()}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow   # two DDP ranks in two processes
def test_every_rank_serves_rank_zeros_teacher(tmp_path):
    mp.start_processes(_teacher_rank, args=(2, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"teacher{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["fingerprint"] == ranks[1]["fingerprint"]
    assert ranks[0]["logits"] == ranks[1]["logits"]   # the serving copy (BN folded) was rebuilt too


class _ScaledBatchNorm(torch.nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward (as a user's or timm's SplitBatchNorm2d has)."""

    def forward(self, x):
        return 3 * super().forward(x) + 1


def _sync_wrapped(model, monkeypatch):
    """The model as a CUDA rank's `ddp_context(sync_batchnorm=True)` wraps it (DDP itself replaced by
    the identity: only the BatchNorm conversion, which needs no GPU, is looked at)."""
    import torch.nn.parallel
    from raydistill.distributed.consistency import ddp_context
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda m, **_: m)
    ctx = ddp_context(torch.device("cuda"), 0, 2, sync_batchnorm=True, channels_last=False)
    return ctx.wrap_model(model)


def test_sync_batchnorm_keeps_timm_activations(monkeypatch):
    """timm's BatchNormAct2d (BN + activation in one layer) stays a layer that applies its
    activation (timm's SyncBatchNormAct), so the synchronised teacher computes what the unconverted
    one does; torch's converter made it a plain SyncBatchNorm that silently skipped the activation."""
    import copy
    timm = pytest.importorskip("timm")
    from raydistill.models import build_model
    torch.manual_seed(0)
    model = build_model("timm:mobilenetv3_small_050", 3)
    acts = sum(type(m) is timm.layers.BatchNormAct2d for m in model.modules())
    assert acts > 0
    reference = copy.deepcopy(model).eval()
    converted = _sync_wrapped(model, monkeypatch).eval()
    assert converted is model                                   # in place: the saved model is the trained one
    assert sum(type(m) is timm.layers.SyncBatchNormAct for m in converted.modules()) == acts
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in converted.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(converted(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("timm_installed", [True, False])
def test_sync_batchnorm_keeps_any_batchnorm_subclass_forward(monkeypatch, timm_installed):
    """A BatchNorm subclass no converter knows keeps its own forward (left unconverted; its running
    statistics are averaged over ranks every epoch like a CPU rank's); plain BatchNorm is synchronised,
    by timm's converter or, without timm, torch's."""
    import copy
    import sys
    if not timm_installed:
        monkeypatch.setitem(sys.modules, "timm", None)
        monkeypatch.setitem(sys.modules, "timm.layers", None)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), _ScaledBatchNorm(4)))
    reference = copy.deepcopy(model).eval()
    converted = _sync_wrapped(model, monkeypatch).eval()
    assert type(converted[1]) is torch.nn.SyncBatchNorm and type(converted[3][1]) is _ScaledBatchNorm
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(converted(x), reference(x), atol=1e-6)
