"""ImageNet-style staged students (torchvision's models, sliced), any classifier as a teacher, and
pretrained weights found offline. Tiny inputs (64 px, batch 2) and few classes keep it cheap."""
from __future__ import annotations

import pytest
import torch
import torchvision

from raydistill.config import ConfigError, Experiment
from raydistill.data import ImageSet, normalize
from raydistill.distill.engine import TrainSettings
from raydistill.models import (TORCHVISION_STUDENTS, block_channels, build_fragment, build_model, carry_over,
                               count_parameters, num_blocks)
from raydistill.models.pretrained import torchvision_weights, torchvision_weights_file
from raydistill.teachers import load_teacher, save_teacher, train_teacher

# forward+backward at every split point, the big ones included (resnet101: 33 blocks, ~16 s;
# wide_resnet50_2: ~14 s, measured on 2 cores)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", TORCHVISION_STUDENTS)
def test_complete_network_is_torchvision_model(arch):
    """Same parameter count as torchvision's model with the same classes; as many blocks as its
    residual / inverted-residual blocks, each block's width where the next reads it."""
    with torch.device("meta"):   # counts need no memory or init
        ours, theirs = build_model(arch, 7), torchvision.models.get_model(arch, num_classes=7)
    assert count_parameters(ours) == count_parameters(theirs)
    widths = block_channels(arch)
    assert len(widths) == num_blocks(arch) == len(ours.blocks)
    assert ours.head.classifier_name == ("fc" if arch.startswith(("resnet", "wide")) else "classifier")


@pytest.mark.parametrize("arch", TORCHVISION_STUDENTS)
def test_growing_carries_stem_and_blocks(arch):
    """A fragment grown into the complete network: every stem/block weight is carried, so both give
    identical block outputs on the same input; the native head starts fresh."""
    split = max(1, num_blocks(arch) // 2)
    torch.manual_seed(0)
    fragment = build_fragment(arch, split, 3, head_width=16).eval()
    torch.manual_seed(1)
    complete = build_model(arch, 5).eval()
    carried = carry_over(fragment, complete)
    expected = [n for n in fragment.state_dict() if n.startswith(("stem.", "blocks."))]
    assert sorted(expected) == [n for n in carried if not n.startswith("head.")]
    assert not any(n.startswith("head.") for n in carried)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fragment.features(x), complete.blocks[:split](complete.stem(x)))


# the big nets train for seconds to minutes each on a CPU: slow tier
BIG = ("resnet34", "resnet50", "resnet101", "wide_resnet50_2")


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in TORCHVISION_STUDENTS])
def test_fragment_at_every_split_trains_at_64px(arch):
    n = num_blocks(arch)
    splits = range(1, n)
    x, y = torch.randint(0, 256, (2, 3, 64, 64)).float() / 255, torch.tensor([0, 2])
    for split in [*splits, n]:
        torch.manual_seed(split)
        model = build_model(arch, 3) if split == n else build_fragment(arch, split, 3, head_width=8)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None for p in model.blocks[-1].parameters())


def _group_data(classes=3, per_class=6, size=64) -> ImageSet:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 3, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)])


def test_teacher_fine_tuned_from_local_torchvision_file(tmp_path):
    """tv:resnet18 from a torchvision state_dict the test saves (random weights, 1000 classes): the
    backbone is loaded, the classifier replaced by one for the group, fine-tuned, saved and served."""
    torch.manual_seed(0)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    data, group = _group_data(), [1, 2]
    s = TrainSettings(batch_size=4, lr=0.01, schedule="constant", augment=False)
    model, history = train_teacher("tv:resnet18", group, 1, data, data, s,
                                   pretrained=str(tmp_path / "resnet18.pth"))
    assert model.class_ids.tolist() == group and model.net.fc.out_features == 2
    assert len(history) == 1 and history[0]["num_classes"] == 2
    # started from the file (the engine builds the teacher from it), then trained away from it
    fresh = build_model("tv:resnet18", 2, pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(fresh.net.conv1.weight, weights["conv1.weight"])
    assert not torch.equal(model.net.conv1.weight, weights["conv1.weight"])
    save_teacher(tmp_path / "group0.pt", model, s.mean, s.std)
    served = load_teacher(tmp_path / "group0.pt", group, expected_arch="tv:resnet18")
    x = data.images[:4]
    with torch.no_grad():
        expected = model.eval()(normalize(x, s.mean, s.std))
    assert torch.allclose(served(x), expected, atol=1e-4)   # BN folded and channels_last: same logits


def test_student_starts_from_pretrained_blocks(tmp_path):
    """student.pretrained: every grade's model (fragment or complete) starts from the file's stem
    and blocks; the head is new."""
    torch.manual_seed(0)
    weights = torchvision.models.mobilenet_v3_small(num_classes=4).state_dict()
    torch.save({"state_dict": weights}, tmp_path / "mnv3.pt")
    fragment = build_fragment("mobilenet_v3_small", 3, 2, head_width=8, pretrained=str(tmp_path / "mnv3.pt"))
    assert torch.equal(fragment.stem[0].weight, weights["features.0.0.weight"])
    assert torch.equal(fragment.blocks[2].block[0][0].weight, weights["features.3.block.0.0.weight"])


def _experiment(**sections) -> Experiment:
    return Experiment.from_dict({"data": {"source": "builtin", "num_classes": 6}, **sections})


def test_missing_weights_fail_in_validate_naming_file_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    exp = _experiment(teachers={"arch": "tv:resnet50", "pretrained": "IMAGENET1K_V2"})
    with pytest.raises(ConfigError) as err:
        exp.validate()
    message = str(err.value)
    assert message.startswith("teachers.pretrained:")
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert f"TORCH_HOME={tmp_path / 'torch-home'}" in message
    with pytest.raises(ConfigError, match=r"student.pretrained: file /nowhere/r18.pth not found"):
        _experiment(student={"arch": "resnet18", "pretrained": "/nowhere/r18.pth"},
                    curriculum={"splits": [2, 4, 8]}).validate()
    with pytest.raises(ConfigError, match=r"student.pretrained: 'IMAGENET9K' is neither a torchvision weights "
                                          r"name of resnet18 \(IMAGENET1K_V1, DEFAULT\) nor a file"):
        _experiment(student={"arch": "resnet18", "pretrained": "IMAGENET9K"}).validate()
    with pytest.raises(ConfigError, match=r"student.pretrained: resnet20 is a CIFAR network"):
        _experiment(student={"arch": "resnet20", "pretrained": "IMAGENET1K_V1"}).validate()
    with pytest.raises(ConfigError, match=r"teachers.arch: unknown torchvision classification model 'resnet5'"):
        _experiment(teachers={"arch": "tv:resnet5"}).validate()
    with pytest.raises(ConfigError, match=r"student.arch: expected one of .* got 'tv:resnet50'"):
        _experiment(student={"arch": "tv:resnet50"}).validate()


def test_weights_name_found_in_the_hub_cache(tmp_path, monkeypatch):
    """A weights name resolves to torch.hub's cache file and loads from it, with no network: the
    test puts a (random) state_dict where torchvision would have downloaded IMAGENET1K_V1."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = torchvision_weights_file(torchvision_weights("resnet18", "IMAGENET1K_V1"))
    path.parent.mkdir(parents=True)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, path)
    exp = _experiment(student={"arch": "resnet18", "pretrained": "IMAGENET1K_V1"},
                      teachers={"arch": "resnet18", "pretrained": "ResNet18_Weights.IMAGENET1K_V1"})
    exp.validate()
    model = build_model("resnet18", 6, pretrained="IMAGENET1K_V1")
    assert torch.equal(model.blocks[7].conv2.weight, weights["layer4.1.conv2.weight"])
    assert model.head.fc.out_features == 6


def test_timm_teacher_needs_timm(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "timm", None)   # as if not installed: `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r"teachers.arch: timm is not installed \(pip install 'raydistill\[timm\]'\)"):
        _experiment(teachers={"arch": "timm:resnet18"}).validate()


def test_timm_teacher_from_local_file(tmp_path):
    """timm:<name> with a local state_dict: timm's own classifier (get_classifier) is replaced."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    weights = timm.create_model("resnet18").state_dict()
    torch.save(weights, tmp_path / "timm-r18.pth")
    exp = _experiment(teachers={"arch": "timm:resnet18", "pretrained": str(tmp_path / "timm-r18.pth")})
    exp.validate()
    model = build_model("timm:resnet18", 3, pretrained=str(tmp_path / "timm-r18.pth"))
    assert torch.equal(model.net.conv1.weight, weights["conv1.weight"])
    assert model.net.get_classifier().out_features == 3
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"teachers.pretrained: timm weights resnet18.a1_in1k .* not in the cache"):
        _experiment(teachers={"arch": "timm:resnet18", "pretrained": "a1_in1k"}).validate()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_complete_student_exports_to_torchvision(arch):
    """The grown student is torchvision's model: same logits from torchvision's own class."""
    from raydistill.models.torchvision_nets import to_torchvision
    torch.manual_seed(0)
    model = build_model(arch, 4).eval()
    plain = to_torchvision(model).eval()
    assert type(plain) is type(torchvision.models.get_model(arch, num_classes=4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    with pytest.raises(ValueError, match="with 2 blocks is not the complete network"):
        to_torchvision(build_fragment(arch, 2, 4, head_width=8))


def test_local_run_with_pretrained_torchvision_teacher_and_imagenet_student(tmp_path):
    """`run` end to end: a tv:resnet18 teacher fine-tuned from a local torchvision file, saved and
    reloaded, teaching a mobilenet_v3_small student (KD) — on the tiny built-in set."""
    from conftest import tiny_experiment
    from raydistill.pipeline.local import run
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    exp = tiny_experiment(tmp_path / "runs", **{
        "methods": "[kd]", "data.train_per_class": 12, "data.test_per_class": 4, "teachers.epochs": 1,
        "teachers.arch": "tv:resnet18", "teachers.pretrained": str(tmp_path / "r18.pth"),
        "student.arch": "mobilenet_v3_small", "data.ratio": "1:1", "curriculum.splits": "[4,11]",
        "curriculum.grade_epochs": "[1,1]", "curriculum.head_widths": 16, "optimizer.batch_size": 16,
        "teachers.batch_size": 16})
    result = run(exp, progress=None)
    assert result.teachers["all"]["source"] == "trained" and result.teachers["all"]["arch"] == "tv:resnet18"
    assert result.methods["kd"]["params"] == count_parameters(torchvision.models.mobilenet_v3_small(num_classes=6))
    served = load_teacher(result.run_dir / "teachers" / "all.pt", list(range(6)), expected_arch="tv:resnet18")
    assert served.model.net.fc.out_features == 6


def _fake_timm_cache(monkeypatch, tmp_path, tag: str, state_dict: dict) -> None:
    """Put `state_dict` where timm's pretrained tag `tag` is looked up in the Hugging Face hub cache
    (refs/main -> snapshot), as if downloaded earlier: nothing is fetched."""
    import huggingface_hub.constants
    import timm
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = timm.models.get_pretrained_cfg(tag).hf_hub_id
    folder = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.save(state_dict, folder / "snapshots" / ("0" * 40) / "pytorch_model.bin")


def test_weights_name_their_own_normalization():
    """The mean/std pretrained weights were trained on, read offline from their metadata: timm's
    pretrained_cfg (this tag: mean = std = 0.5), torchvision's weights transforms (ImageNet's), a
    staged ImageNet-style student's torchvision weights; none for a file, no weights, or CIFAR nets."""
    from raydistill.models.pretrained import weights_normalization
    pytest.importorskip("timm")
    half = ((0.5,) * 3, (0.5,) * 3)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert weights_normalization("timm:resnet18d", "ra4_e3600_r224_in1k") == half
    assert weights_normalization("timm:resnet18", "a1_in1k") == imagenet
    assert weights_normalization("tv:resnet18", "IMAGENET1K_V1") == imagenet
    assert weights_normalization("resnet18", "ResNet18_Weights.IMAGENET1K_V1") == imagenet
    assert weights_normalization("tv:resnet18", "/some/file.pth") is None
    assert weights_normalization("timm:resnet18", None) is None


def test_pretrained_timm_teacher_trains_serves_and_saves_its_weights_normalization(tmp_path, monkeypatch):
    """A timm teacher fine-tuned from a tag trained with mean = std = 0.5 is trained, served and saved
    with those statistics, not the data's (a 2x input-scale shift); `teachers.normalize` overrides."""
    timm = pytest.importorskip("timm")
    from conftest import tiny_experiment
    from raydistill.pipeline import prepare, stages as runner
    from raydistill.teachers import load_teacher
    from raydistill.pipeline.prepare import prepare_data, student_settings, teacher_settings
    torch.manual_seed(0)
    _fake_timm_cache(monkeypatch, tmp_path, "resnet18d.ra4_e3600_r224_in1k",
                     timm.create_model("resnet18d").state_dict())
    exp = tiny_experiment(tmp_path / "runs", **{
        "methods": "[kd]", "data.train_per_class": 12, "data.test_per_class": 4, "data.ratio": "1:1",
        "curriculum.splits": "[1,3]", "curriculum.grade_epochs": "[1,1]", "teachers.epochs": 1,
        "teachers.arch": "timm:resnet18d", "teachers.pretrained": "ra4_e3600_r224_in1k",
        "teachers.batch_size": 16, "optimizer.batch_size": 16}).validate()
    data = prepare_data(exp)
    half = (0.5,) * 3
    assert tuple(data.mean) != half
    seen = []
    real_train = runner.local_train("cpu", **exp.context_options())

    def train(plan, *args, **kwargs):
        seen.append(args[4])    # the TrainSettings the teacher is trained with
        return real_train(plan, *args, **kwargs)
    out = prepare.check_output_dir(exp)
    teacher, info = runner.teacher_stage(exp, data, out, "all", "cpu", lambda _m: None, train=train)
    assert (seen[0].mean, seen[0].std) == (half, half)
    assert (teacher.mean, teacher.std) == (half, half)
    saved = torch.load(out.local_path / "teachers" / "all.pt", weights_only=True)
    assert (tuple(saved["mean"]), tuple(saved["std"])) == (half, half)
    served = load_teacher(out.local_path / "teachers" / "all.pt", list(range(6)))
    assert (served.mean, served.std) == (half, half)
    # the student (no pretrained weights) keeps the data's statistics; overrides win over the weights'
    assert student_settings(exp, data).mean == tuple(float(v) for v in data.mean)
    assert teacher_settings(exp.with_overrides(["teachers.normalize=data"]), data).mean == tuple(data.mean)
    from raydistill.pipeline.prepare import input_stats
    given = exp.with_overrides(["teachers.normalize={mean: [0.1, 0.2, 0.3], std: [1, 2, 3]}"]).validate()
    assert input_stats(given.teachers, data) == {"mean": (0.1, 0.2, 0.3), "std": (1.0, 2.0, 3.0)}


def test_pretrained_student_trains_and_saves_its_weights_normalization(tmp_path, monkeypatch):
    """A staged student started from torchvision weights (a random state_dict in the hub cache here)
    trains with the weights' ImageNet statistics and its checkpoint records them."""
    from conftest import tiny_experiment
    from raydistill.pipeline import prepare, stages as runner
    from raydistill.pipeline.prepare import prepare_data
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path = torchvision_weights_file(torchvision_weights("resnet18", "IMAGENET1K_V1"))
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    exp = tiny_experiment(tmp_path / "runs", **{
        "methods": "[scratch]", "data.train_per_class": 12, "data.test_per_class": 4, "student.arch": "resnet18",
        "student.pretrained": "IMAGENET1K_V1", "curriculum.splits": "[2,4,8]", "curriculum.grade_epochs": "[1,1,1]",
        "optimizer.batch_size": 8, "teachers.batch_size": 8}).validate()
    data = prepare_data(exp)
    assert tuple(data.mean) != (0.485, 0.456, 0.406)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    seen = []
    real_train = runner.local_train("cpu", **exp.context_options())

    def train(plan, *args, **kwargs):
        seen.append(args[4])    # the student's TrainSettings
        return real_train(plan, *args, **kwargs)
    out = prepare.check_output_dir(exp)
    runner.method_stage(exp, data, out, "scratch", None, lambda _m: None, train)
    assert (seen[0].mean, seen[0].std) == imagenet
    saved = torch.load(out.local_path / "checkpoints" / "scratch.pt", weights_only=True)
    assert (tuple(saved["mean"]), tuple(saved["std"])) == imagenet
