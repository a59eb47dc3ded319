"""Tests for raydistill.models: architectures, fragments, growth (carry_over)."""
import pytest
import torch

from raydistill.models import (
    ARCHITECTURES,
    ReferenceHead,
    StagedModel,
    block_channels,
    build_fragment,
    build_grade_model,
    build_model,
    carry_over,
    count_parameters,
    num_blocks,
)

torch.set_num_threads(2)

# Reference counts at 100 classes (CRD / RepDistiller papers).
TARGET_PARAMS_100 = {
    "resnet20": 0.28e6,
    "resnet110": 1.73e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_40_2": 2.26e6,
}


def _x(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _train_a_bit(model, steps=3, seed=1):
    """A few random SGD steps in train mode so weights and BN stats leave init."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, model.num_classes, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_architectures_listed_and_sorted():
    assert ARCHITECTURES == sorted(ARCHITECTURES)
    for a in ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
              "resnet110", "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2",
              "wrn_40_1", "wrn_40_2"]:
        assert a in ARCHITECTURES
    assert num_blocks("resnet20") == 9 and num_blocks("resnet110") == 54
    assert num_blocks("resnet8x4") == 3 and num_blocks("wrn_40_2") == 18
    assert block_channels("resnet20") == [16] * 3 + [32] * 3 + [64] * 3
    assert block_channels("wrn_16_2") == [32] * 2 + [64] * 2 + [128] * 2


def test_param_counts_match_references():
    for arch in ARCHITECTURES:
        print(f"{arch:<12} C=10 {count_parameters(build_model(arch, 10)):>10,}"
              f"  C=100 {count_parameters(build_model(arch, 100)):>10,}")
    for arch, target in TARGET_PARAMS_100.items():
        n = count_parameters(build_model(arch, 100))
        assert abs(n - target) / target < 0.02, (arch, n, target)


def test_native_head_names():
    r = build_model("resnet20", 10)
    w = build_model("wrn_16_2", 10)
    assert {n for n, _ in r.head.named_parameters()} == {"fc.weight", "fc.bias"}
    assert {n for n, _ in w.head.named_parameters()} == {"bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    f = build_fragment("resnet20", 3, 10)
    assert isinstance(f.head, ReferenceHead)
    assert {n for n, _ in f.head.named_parameters()} == {
        "proj.weight", "norm.weight", "norm.bias", "classifier.weight", "classifier.bias"}


# the deep or wide nets take seconds each (every fragment is built and run): slow tier; every family
# keeps a fast representative (resnet8/14/20, wrn_16_*, resnet18, mobilenet_*, efficientnet_b0)
HEAVY = {"wide_resnet50_2", "resnet101", "resnet110", "resnet32x4", "resnet50", "resnet34", "mobilenet_v3_large",
         "resnet32", "wrn_40_2", "wrn_40_1"}


BIG_TORCHVISION = {"resnet34", "resnet50", "resnet101", "wide_resnet50_2"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in ARCHITECTURES])
def test_forward_complete_and_all_fragments(arch):
    x = _x()
    full = build_model(arch, 7)
    assert isinstance(full, StagedModel)
    assert full.split == num_blocks(arch) and full.arch == arch
    assert full.class_ids.dtype == torch.int64 and torch.equal(full.class_ids, torch.arange(7))
    assert full(x).shape == (2, 7)  # train mode
    full_names = set(full.state_dict())
    chans = block_channels(arch)
    assert len(chans) == num_blocks(arch)
    # a torchvision fragment is sliced from its whole net, built and initialized for each split
    # (resnet101's 33 fragments: ~14 s): the big ones on the meta device, as shapes and names need
    # no memory or init (for a small net a forward on meta costs more than the init it saves)
    device = "meta" if arch in BIG_TORCHVISION else "cpu"
    with torch.no_grad():
        for s in range(1, num_blocks(arch) + 1):
            with torch.device(device):
                frag = build_fragment(arch, s, 5, head_width=8).eval()
            assert frag.split == s and len(frag.blocks) == s
            feats = frag.features(x.to(device))
            assert feats.shape[1] == chans[s - 1]
            assert frag.head(feats).shape == (2, 5)
            body = {n for n in frag.state_dict() if not n.startswith("head.") and n != "class_ids"}
            assert body <= full_names  # fragment block i is named like block i of the full net


def test_head_relu_flag():
    assert isinstance(build_fragment("resnet8", 1, 3, head_relu=True).head.act, torch.nn.ReLU)
    assert isinstance(build_fragment("resnet8", 1, 3, head_relu=False).head.act, torch.nn.Identity)


def test_grow_fragment_to_fragment_identical_prefix():
    torch.manual_seed(0)
    small = _train_a_bit(build_fragment("resnet20", 3, 4, head_width=64))
    ref_init = build_fragment("resnet20", 3, 4, head_width=64)
    assert not torch.equal(small.blocks[0].conv1.weight, ref_init.blocks[0].conv1.weight)
    assert small.blocks[2].bn2.num_batches_tracked.item() == 3
    big = build_grade_model("resnet20", 6, 8, 64, final=False)
    names = carry_over(small, big)
    assert names == sorted(names)

    small_body = [n for n in small.state_dict() if n.startswith(("stem.", "blocks."))]
    assert set(small_body) <= set(names)
    assert not any(n.startswith(("blocks.3", "blocks.4", "blocks.5")) for n in names)
    assert "class_ids" not in names
    # Same head width, different classes: proj is 16->64 vs 32->64 so not carried, and then
    # neither is norm (its statistics describe the old proj's output); the class-indexed
    # classifier is never copied wholesale across different class maps.
    assert not any(n.startswith(("head.proj.", "head.norm.")) for n in names)
    assert not any(n.startswith("head.classifier") for n in names)

    small.eval(); big.eval()
    x = _x()
    with torch.no_grad():
        a = small.blocks[0:3](small.stem(x))
        b = big.blocks[0:3](big.stem(x))
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["resnet8", "wrn_16_1"])
def test_grow_fragment_to_final_model(arch):
    torch.manual_seed(0)
    n = num_blocks(arch)
    frag = _train_a_bit(build_fragment(arch, n - 1, 4, head_width=16))
    final = build_grade_model(arch, n, 10, 16, final=True)
    assert not isinstance(final.head, ReferenceHead) and final.split == n
    names = carry_over(frag, final)
    assert not any(k.startswith("head.") for k in names)  # reference head never enters native head
    assert not any(k.startswith(f"blocks.{n - 1}.") for k in names)
    frag.eval(); final.eval()
    x = _x()
    with torch.no_grad():
        assert torch.equal(frag.features(x), final.blocks[: n - 1](final.stem(x)))


def test_carry_same_class_map_copies_classifier():
    torch.manual_seed(0)
    a = _train_a_bit(build_fragment("resnet8", 2, 5, head_width=16))
    b = build_fragment("resnet8", 2, 5, head_width=16)
    names = carry_over(a, b)
    assert "head.classifier.weight" in names
    a.eval(); b.eval()
    with torch.no_grad():
        assert torch.equal(a(_x()), b(_x()))


def test_carry_head_rows():
    torch.manual_seed(0)
    # splits 4 and 6 of resnet20 both end in 32 channels, so the whole head up to the
    # classifier (proj, norm) carries and classifier rows can follow.
    src = build_fragment("resnet20", 4, 4, head_width=32)
    src.class_ids.copy_(torch.tensor([7, 2, 5, 9]))
    _train_a_bit(src)
    dst = build_fragment("resnet20", 6, 6, head_width=32)
    dst.class_ids.copy_(torch.tensor([0, 5, 1, 7, 2, 3]))  # shares 5, 7, 2; 0, 1, 3 are new
    fresh_w = dst.head.classifier.weight.detach().clone()
    fresh_b = dst.head.classifier.bias.detach().clone()

    assert "head.classifier.weight[rows]" not in carry_over(src, build_fragment("resnet20", 6, 6, head_width=32))
    names = carry_over(src, dst, carry_head_rows=True)
    assert "head.classifier.weight[rows]" in names and "head.proj.weight" in names
    assert torch.equal(dst.class_ids, torch.tensor([0, 5, 1, 7, 2, 3]))  # never carried
    sw, sb = src.head.classifier.weight, src.head.classifier.bias
    dw, db = dst.head.classifier.weight, dst.head.classifier.bias
    for d_pos, s_pos in [(1, 2), (3, 0), (4, 1)]:
        assert torch.equal(dw[d_pos], sw[s_pos]) and torch.equal(db[d_pos], sb[s_pos])
    for d_pos in [0, 2, 5]:
        assert torch.equal(dw[d_pos], fresh_w[d_pos]) and torch.equal(db[d_pos], fresh_b[d_pos])


def test_carry_head_rows_needs_matching_head():
    src = build_fragment("resnet20", 3, 4, head_width=32)
    dst = build_fragment("resnet20", 6, 6, head_width=16)  # different width: nothing carried in head
    names = carry_over(src, dst, carry_head_rows=True)
    assert not any(n.startswith("head.") for n in names)
    # Same width but proj not carried (16 vs 32 in-channels): rows stay fresh.
    src = build_fragment("resnet20", 3, 4, head_width=32)
    dst = build_fragment("resnet20", 6, 6, head_width=32)
    fresh = dst.head.classifier.weight.detach().clone()
    names = carry_over(src, dst, carry_head_rows=True)
    assert "head.classifier.weight[rows]" not in names
    assert torch.equal(dst.head.classifier.weight, fresh)
    final = build_model("resnet8", 6)
    names = carry_over(build_fragment("resnet8", 3, 4), final, carry_head_rows=True)
    assert not any(n.startswith("head.") for n in names)


def test_errors():
    with pytest.raises(ValueError, match="resnet999.*resnet20"):
        build_model("resnet999", 10)
    for fn in (lambda: build_fragment("nope", 1, 10), lambda: num_blocks("nope"),
               lambda: block_channels("nope"), lambda: build_grade_model("nope", 1, 10, 64, False)):
        with pytest.raises(ValueError, match="nope"):
            fn()
    with pytest.raises(ValueError, match=r"split 0.*1\.\.9"):
        build_fragment("resnet20", 0, 10)
    with pytest.raises(ValueError, match=r"split 10.*1\.\.9"):
        build_fragment("resnet20", 10, 10)
    with pytest.raises(ValueError, match="split"):
        build_grade_model("resnet20", 10, 10, 64, final=False)
    with pytest.raises(ValueError, match="final"):
        build_grade_model("resnet20", 6, 10, 64, final=True)
    m = build_grade_model("resnet20", 9, 10, 64, final=True)
    assert not isinstance(m.head, ReferenceHead) and hasattr(m.head, "fc")
    m = build_grade_model("resnet20", 9, 10, 64, final=False)
    assert isinstance(m.head, ReferenceHead)
