"""The distillation losses against values computed by hand (plain math, no torch) on small tensors."""
import math

import pytest
import torch

from raydistill.config import LOSSES as CONFIG_LOSSES
from raydistill.distill.losses import LOSSES, Distillation, dkd, dkd_terms, ed_loss, kd, lskd, standardize


def softmax(xs, T=1.0):
    e = [math.exp(x / T) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.3, -0.7, 2.2, 0.0]]
TEACHER = [[0.0, 3.0, 1.0, -2.0], [1.5, 0.2, 0.1, -0.4]]
TARGET = [1, 3]


def test_kd_equals_hand_computed_kl():
    T = 2.0
    expected = [T * T * kl(softmax(t, T), softmax(s, T)) for s, t in zip(STUDENT, TEACHER)]
    got = kd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET), temperature=T)
    assert got.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_dkd_terms_equal_hand_computed_values():
    T, alpha, beta = 4.0, 1.0, 8.0
    for s, t, y in zip(STUDENT, TEACHER, TARGET):
        ps, pt = softmax(s, T), softmax(t, T)
        tckd = T * T * kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        others = [i for i in range(len(s)) if i != y]
        nckd = T * T * kl(softmax([t[i] for i in others], T), softmax([s[i] for i in others], T))
        args = (torch.tensor([s]), torch.tensor([t]), torch.tensor([y]))
        got_t, got_n = dkd_terms(*args, temperature=T)
        assert got_t.item() == pytest.approx(tckd, rel=1e-4, abs=1e-6)
        assert got_n.item() == pytest.approx(nckd, rel=1e-4, abs=1e-6)
        got = dkd(*args, temperature=T, alpha=alpha, beta=beta).item()
        assert got == pytest.approx(alpha * tckd + beta * nckd, rel=1e-4, abs=1e-5)


def test_dkd_terms_add_up_to_kd_as_in_the_paper():
    """KD = TCKD + (1 − p_t^T)·NCKD, p_t^T the teacher's target probability at temperature T."""
    torch.manual_seed(0)
    s, t = torch.randn(16, 7) * 3, torch.randn(16, 7) * 3
    y = torch.randint(0, 7, (16,))
    T = 3.0
    tckd, nckd = dkd_terms(s, t, y, temperature=T)
    p_t = torch.softmax(t / T, dim=1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(tckd + (1 - p_t) * nckd, kd(s, t, y, temperature=T), rtol=1e-5, atol=1e-6)


def test_lskd_is_kd_on_standardised_logits():
    torch.manual_seed(1)
    s, t = torch.randn(8, 5) * 4 + 2, torch.randn(8, 5) * 0.5 - 1
    y = torch.zeros(8, dtype=torch.long)
    assert torch.allclose(lskd(s, t, y, temperature=2.0),
                          kd(standardize(s), standardize(t), y, temperature=2.0), rtol=1e-6)
    # by hand: z-score with the N−1 standard deviation, then KD at the base temperature
    row = [1.0, 2.0, 4.0, 7.0]
    mean = sum(row) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / 3)
    z = [(v - mean) / std for v in row]
    assert standardize(torch.tensor([row]))[0].tolist() == pytest.approx(z, rel=1e-4, abs=1e-6)
    z_s, z_t = [(v - mean) / std for v in row], [(v - mean) / std for v in reversed(row)]
    expected = 4.0 * kl(softmax(z_t, 2.0), softmax(z_s, 2.0))
    got = lskd(torch.tensor([row]), torch.tensor([row[::-1]]), torch.tensor([0]), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # invariant to each vector's shift and scale, which is the point of standardising
    assert torch.allclose(lskd(3 * s + 5, t, y, temperature=2.0), lskd(s, t, y, temperature=2.0), rtol=1e-4)


def test_single_class_slices_distil_nothing():
    one = torch.tensor([[2.0], [-1.0]])
    y = torch.tensor([0, 0])
    for name, fn in LOSSES.items():
        params = {"alpha": 1.0, "beta": 8.0} if name == "dkd" else {}
        out = fn(one, one * 3, y, temperature=4.0, **params)
        assert torch.equal(out, torch.zeros(2)), name


def test_warmup_weight_is_linear_then_one():
    d = Distillation.of("dkd", {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup": 4})
    assert [d.weight(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET)
    assert torch.allclose(d(s, t, y, epoch=0), 0.25 * dkd(s, t, y, temperature=4.0, alpha=1.0, beta=8.0))
    assert Distillation.of("kd", {"temperature": 4.0}).weight(0) == 1.0


def test_registry_and_config_name_the_same_losses():
    assert tuple(LOSSES) == CONFIG_LOSSES


def test_ed_loss_weights_terms():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    kd_sum = torch.tensor(8.0)
    terms = ed_loss(z, y, kd_sum, alpha=0.3)
    ce = torch.nn.functional.cross_entropy(z, y)
    assert torch.allclose(terms["loss"], 0.3 * ce + 0.7 * 2.0)
    assert torch.allclose(ed_loss(z, y, None, 0.3)["loss"], ce)
