import math

import torch

from raydistill.distill.losses import ed_loss, sliced_kd_loss, soft_cross_entropy


def test_sliced_kd_equals_hand_computed_value():
    student = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    teacher = torch.tensor([[0.0, 3.0]])          # teacher of the classes at student positions 3 and 1
    positions = torch.tensor([3, 1])
    T = 2.0
    # by hand: p = softmax(teacher / T); q = log_softmax(student[:, [3, 1]] / T); T^2 * -(p * q).sum()
    t = [0.0 / T, 3.0 / T]
    p = [math.exp(v) / sum(math.exp(u) for u in t) for v in t]
    s = [-1.0 / T, 2.0 / T]
    log_z = math.log(sum(math.exp(u) for u in s))
    expected = T * T * -sum(pi * (si - log_z) for pi, si in zip(p, s))
    got = sliced_kd_loss(student, teacher, positions, T)
    assert abs(got.item() - expected) < 1e-6


def test_soft_ce_reductions_agree():
    z, t = torch.randn(5, 4), torch.randn(5, 4)
    per = soft_cross_entropy(z, t, 4.0, reduction="none")
    assert torch.allclose(per.mean(), soft_cross_entropy(z, t, 4.0))
    assert torch.allclose(per.sum(), soft_cross_entropy(z, t, 4.0, reduction="sum"))


def test_ed_loss_weights_terms():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    kd_sum = torch.tensor(8.0)
    terms = ed_loss(z, y, kd_sum, alpha=0.3)
    ce = torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(terms["loss"], 0.3 * ce + 0.7 * 2.0)
    assert torch.allclose(ed_loss(z, y, None, 0.3)["loss"], ce)
