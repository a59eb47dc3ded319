"""The GPU path, checked on the CPU where it can be, and on CUDA where it must be (`gpu` marker:
skipped without CUDA; `benchmarks/gpu_check.sh` runs them on a GPU machine).

Precision (autocast, GradScaler), the training set resident on the device, torch.compile wiring,
fractional-GPU teacher actors co-located with the student, and the shipped paper config."""
import math

import pytest
import torch

from raydistill.config import ConfigError, Experiment
from raydistill.distill.curriculum import plan_single_grade, teachers_needed
from raydistill.distill.engine import GradeTables, TrainContext, TrainSettings, _prefetched, epoch_generator, \
    grade_passes, shard_batches, train_plan
from raydistill.distill.precision import Precision
from raydistill.models import build_model

from conftest import tiny_experiment

CUDA = pytest.param("cuda", marks=pytest.mark.gpu)


def settings(data, **kw):
    return TrainSettings(mean=tuple(data.mean), std=tuple(data.std), **{"batch_size": 32, **kw})


def one_batch(data, n=32):
    s = settings(data)
    x = TrainContext(channels_last=False).batch(data.train.images[:n], s)
    return x, data.train.labels[:n]


def loss_and_step(precision: str, device: str, data) -> tuple[float, float, torch.nn.Module]:
    """CE of a fixed batch before one SGD step in `precision`, and after it; the stepped model."""
    torch.manual_seed(0)
    model = build_model("resnet8", data.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    amp = Precision(precision, device)
    x, y = (t.to(device) for t in one_batch(data))
    before = torch.nn.functional.cross_entropy(amp.forward(model, x), y)
    amp.step(before, opt)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(amp.forward(model, x), y)
    return before.item(), after.item(), model


# ---- precision ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_bf16_step_is_finite_and_close_to_fp32(tiny_data, device):
    b32, a32, m32 = loss_and_step("fp32", device, tiny_data)
    b16, a16, m16 = loss_and_step("bf16", device, tiny_data)
    assert math.isfinite(b16) and math.isfinite(a16)
    assert abs(b16 - b32) < 0.02 * b32 and abs(a16 - a32) < 0.05 * a32, (b32, b16, a32, a16)
    assert all(torch.isfinite(p).all() for p in m16.parameters())
    assert b16 != b32     # autocast really ran in bf16


def test_engine_trains_in_the_context_precision(tiny_data):
    """train_plan with TrainContext(precision=bf16): a finite epoch loss close to fp32's, not equal
    to it (the step really ran under autocast); evaluation runs in the same precision."""
    plan = plan_single_grade("scratch", "resnet8", 3, tiny_data.groups, 1)
    s = settings(tiny_data)
    d = tiny_data
    _, fp32 = train_plan(plan, d.train, d.val, None, None, s, TrainContext(precision="fp32"))
    _, bf16 = train_plan(plan, d.train, d.val, None, None, s, TrainContext(precision="bf16"))
    assert math.isfinite(bf16[0]["loss"]) and bf16[0]["loss"] != fp32[0]["loss"]
    assert abs(bf16[0]["loss"] - fp32[0]["loss"]) < 0.05 * fp32[0]["loss"]


def test_teachers_infer_in_the_given_precision(tiny_data):
    from raydistill.teachers import FrozenTeacher
    torch.manual_seed(0)
    model = build_model("resnet8", 2)
    fp32 = FrozenTeacher(model, tiny_data.mean, tiny_data.std)
    bf16 = FrozenTeacher(model, tiny_data.mean, tiny_data.std, precision="bf16")
    images = tiny_data.train.images[:16]
    a, b = fp32(images), bf16(images)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * a.abs().max().item())


def test_soft_label_cache_key_tells_teacher_precisions_apart(tiny_data):
    from raydistill.softlabels.key import teacher_fingerprint
    from raydistill.teachers import FrozenTeacher
    model = build_model("resnet8", 2)
    keys = {p: teacher_fingerprint(FrozenTeacher(model, tiny_data.mean, tiny_data.std, precision=p))
            for p in ("fp32", "bf16", "fp16")}
    assert len(set(keys.values())) == 3
    assert keys["fp32"] == teacher_fingerprint(FrozenTeacher(model, tiny_data.mean, tiny_data.std))


def test_fp16_without_cuda_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"^precision: expected fp32 or bf16 when device puts the work on cpu"):
        Experiment.load("default").with_overrides(["precision=fp16", "device=cpu"]).validate()
    exp = Experiment.load("default").with_overrides(["precision=fp16"]).validate()   # device auto: may be CUDA
    with pytest.raises(ConfigError, match=r"^precision: .*when ray.use_gpu puts the work on cpu"):
        exp.check_devices("cpu", "ray")
    gpu = exp.with_overrides(["ray.use_gpu=true", "ray.teachers=actors"])
    with pytest.raises(ConfigError, match=r"^precision: .*when ray.teacher_gpus puts the work on cpu"):
        gpu.check_devices("cuda", "ray")
    gpu.with_overrides(["ray.teacher_gpus=0.25"]).check_devices("cuda", "ray")   # accepted
    with pytest.raises(ConfigError, match=r"^precision: expected one of \['fp32', 'bf16', 'fp16'\], got 'fp8'"):
        Experiment.load("default").with_overrides(["precision=fp8"]).validate()


def test_gpu_fields_are_validated():
    def refused(overrides, pattern):
        with pytest.raises(ConfigError, match=pattern):
            Experiment.load("default").with_overrides(overrides).validate()
    refused(["device_data_fraction=2"], r"^device_data_fraction: expected a number in \[0, 1\], got 2")
    refused(["ray.gpus_per_worker=0"], r"^ray.gpus_per_worker: expected a positive number, got 0")
    refused(["ray.workers=2", "ray.gpus_per_worker=0.5"],
            r"^ray.gpus_per_worker: expected at least 1 with more than one worker \(nccl")


def test_only_fp16_scales_the_loss():
    assert Precision("bf16", "cuda").scaler is None and Precision("fp32", "cpu").scaler is None


@pytest.mark.gpu
def test_fp16_step_with_grad_scaler_on_cuda(tiny_data):
    b32, a32, _ = loss_and_step("fp32", "cuda", tiny_data)
    b16, a16, model = loss_and_step("fp16", "cuda", tiny_data)
    assert Precision("fp16", "cuda").scaler.is_enabled()
    assert math.isfinite(b16) and math.isfinite(a16)
    assert abs(b16 - b32) < 0.02 * b32 and abs(a16 - a32) < 0.05 * a32, (b32, b16, a32, a16)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- the training set on the device -------------------------------------------------------------

def epoch_inputs(data, device, fraction):
    """Every normalised input batch of one augmented epoch pass, as the engine builds them."""
    from raydistill.data import resident_on
    ctx = TrainContext(device=torch.device(device), device_data_fraction=fraction)
    train = resident_on(data.train, ctx.device, fraction)
    plan = plan_single_grade("scratch", "resnet8", 3, data.groups, 1)
    grade, s = plan.grades[0], settings(data, batch_size=64)
    tables = GradeTables(grade, data.num_classes, ctx.device)
    pass_indices = grade_passes(grade, train.labels, "mixed")[0]
    batches = [(b, train.images[b], train.labels[b], n)
               for b, n in shard_batches(pass_indices, s.batch_size, s.seed, 3, 0, 0, 1)]
    gen = epoch_generator(s.seed, 3, 0, 1000)
    out = [ctx.batch(images, s)
           for (images, _, _, _), _ in _prefetched(batches, len(train), grade, tables, None, s, gen, 3)]
    return train, out


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_device_data_path_equals_host_path(tiny_data, device):
    """Crop/flip/normalise on the device (training set resident there, draws from the same CPU
    generator) gives bit-for-bit the inputs of the host path (augment on the CPU, then copy)."""
    host_set, host = epoch_inputs(tiny_data, device, 0.0)
    resident_set, resident = epoch_inputs(tiny_data, device, 1.0)
    assert host_set.images.device.type == "cpu"
    assert resident_set.images.device.type == device
    assert len(host) == len(resident) > 1
    for a, b in zip(host, resident):
        assert a.device.type == b.device.type == device
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_training_set_stays_on_the_host_when_it_does_not_fit(tiny_data):
    from raydistill.data import resident_on
    assert resident_on(tiny_data.train, "cuda", 1e-12) is tiny_data.train
    assert resident_on(tiny_data.train, "cuda", 0.0) is tiny_data.train
    assert resident_on(tiny_data.train, "cuda", 0.5).images.is_cuda


# ---- torch.compile -------------------------------------------------------------------------------

def test_compile_wraps_student_and_teachers(tiny_data):
    """Wiring only on the CPU: inductor needs ~55 s per graph on this 2-core machine (measured), and
    every grade and trailing batch size is a new graph; the compiled step runs in the gpu test."""
    from raydistill.teachers import FrozenTeacher
    model = build_model("resnet8", 2)
    compiled = TrainContext(compile=True).train_model(model)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is model
    assert TrainContext().train_model(model) is model
    teacher = FrozenTeacher(model, tiny_data.mean, tiny_data.std, compile=True)
    assert isinstance(teacher.net, torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.gpu
def test_compiled_bf16_epoch_on_cuda(tiny_data):
    plan = plan_single_grade("scratch", "resnet8", 3, tiny_data.groups, 2)
    d = tiny_data
    ctx = TrainContext(device=torch.device("cuda"), precision="bf16", compile=True)
    model, history = train_plan(plan, d.train, d.val, None, None, settings(d), ctx)
    assert all(math.isfinite(h["loss"]) for h in history) and history[1]["loss"] < history[0]["loss"]
    assert next(model.parameters()).is_cuda


# ---- fractional-GPU teacher actors, co-located ---------------------------------------------------

def test_actor_options_carry_fractional_gpus_and_colocation():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from raydistill.distributed.teacher_actors import actor_options
    options = actor_options(1.0, 0.25, {"teacher_node": 1}, "t0", node_id="ab" * 28)
    assert options["num_gpus"] == 0.25 and options["resources"] == {"teacher_node": 1} and options["name"] == "t0"
    strategy = options["scheduling_strategy"]
    assert isinstance(strategy, NodeAffinitySchedulingStrategy) and strategy.node_id == "ab" * 28 and strategy.soft
    assert "scheduling_strategy" not in actor_options(1.0, 0.0)


def test_paper_config_fits_student_and_teachers_on_one_gpu():
    exp = Experiment.load("cifar100_paper").validate()
    r = exp.ray
    teachers = len(teachers_needed(exp.methods, exp.num_groups(), exp.all_teacher_weights()))
    assert r.use_gpu and r.teachers == "actors" and r.colocate_teachers and 0 < r.teacher_gpus < 1
    assert r.workers * r.gpus_per_worker + teachers * r.teacher_gpus <= 1.0 + 1e-9
    exp.check_devices("cuda", "ray")


@pytest.mark.slow   # starts Ray (session instance)
def test_colocated_actor_lands_on_the_given_node(ray_session, tiny_data):
    from raydistill.distributed.teacher_actors import start_teacher_actors, teacher_bytes
    from raydistill.teachers import FrozenTeacher
    node = ray_session.get_runtime_context().get_node_id()
    teacher = FrozenTeacher(build_model("resnet8", 2), tiny_data.mean, tiny_data.std)
    actors = start_teacher_actors({"g": teacher_bytes(teacher)}, cpus=0, node_id=node, precision="bf16")
    try:
        assert ray_session.get(actors["g"].node_id.remote()) == node
        assert ray_session.get(actors["g"].device.remote()) == "cpu"
    finally:
        ray_session.kill(actors["g"])


@pytest.mark.slow   # starts Ray (session instance)
@pytest.mark.gpu
def test_teacher_actors_share_a_fractional_gpu(ray_session, tiny_data):
    import numpy as np
    from raydistill.distributed.teacher_actors import start_teacher_actors, teacher_bytes
    from raydistill.teachers import FrozenTeacher
    node = ray_session.get_runtime_context().get_node_id()
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("resnet8", 2), tiny_data.mean, tiny_data.std)
    actors = start_teacher_actors({k: teacher_bytes(teacher) for k in ("a", "b", "c")}, cpus=0, gpus=0.25,
                                  node_id=node, precision="bf16")
    try:
        assert {ray_session.get(a.device.remote()).split(":")[0] for a in actors.values()} == {"cuda"}
        images = tiny_data.train.images[:8].numpy()
        expected = FrozenTeacher(teacher.model, tiny_data.mean, tiny_data.std, device="cuda", precision="bf16")
        got = ray_session.get(actors["a"].logits.remote(images))
        assert np.allclose(got, expected(torch.from_numpy(images)).numpy(), rtol=1e-2, atol=1e-2)
    finally:
        for a in actors.values():
            ray_session.kill(a)


@pytest.mark.slow   # starts Ray (session instance)
@pytest.mark.gpu
def test_ray_train_ddp_over_nccl_with_one_gpu_worker(ray_session, tmp_path):
    from raydistill.distributed.trainer import run_distributed
    exp = tiny_experiment(tmp_path, **{"teachers.epochs": 1, "curriculum.grade_epochs": "[1,1,1]",
                                       "ray.use_gpu": "true", "ray.cpus_per_worker": 1,
                                       "precision": "bf16"})
    result = run_distributed(exp, progress=None)
    assert math.isfinite(result.methods["ed"]["final_test_acc"])
    assert (result.run_dir / "checkpoints" / "ed.pt").is_file()
