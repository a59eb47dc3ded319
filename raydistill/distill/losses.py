"""Loss terms as pure functions of logits (mdistiller style), so every method shares them.

The distillation losses live in one registry, `LOSSES`: each is a pure function
`(student, teacher, target, **params) -> per-sample loss [B]` over logits whose columns are the
teacher's classes in the teacher's order (for a group teacher: the group's slice of the student's
outputs), with `target` the sample's position *in those columns*. Adding an algorithm is one
function here, one registry line, and its parameter block in `raydistill.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def kd(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Hinton KD: T² · KL(softmax(t/T) ‖ softmax(z/T)) per sample (the T² keeps the gradient scale
    comparable to CE). `target` is unused: KD treats every class alike."""
    t = temperature
    log_p = F.log_softmax(teacher.float() / t, dim=1)
    log_q = F.log_softmax(student.float() / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1) * (t * t)


def _binary_kl(log_p: torch.Tensor, log_rest_p: torch.Tensor, log_q: torch.Tensor,
               log_rest_q: torch.Tensor) -> torch.Tensor:
    """KL([p, 1−p] ‖ [q, 1−q]) from the log-probabilities of both outcomes."""
    return log_p.exp() * (log_p - log_q) + log_rest_p.exp() * (log_rest_p - log_rest_q)


def dkd_terms(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two terms per sample (Zhao et al., CVPR 2022), both × T²:
    TCKD = KL of the binary target/non-target split [p_t, 1−p_t];
    NCKD = KL of the distributions over the non-target classes only (target removed).
    With a single class there is nothing to distil: both terms are zero."""
    t = temperature
    zs, zt = student.float() / t, teacher.float() / t
    n, c = zs.shape
    if c < 2:
        zero = zs.sum(dim=1) * 0
        return zero, zero
    is_target = F.one_hot(target, c).bool()
    others_s, others_t = zs[~is_target].view(n, c - 1), zt[~is_target].view(n, c - 1)
    norm_s, norm_t = torch.logsumexp(zs, dim=1), torch.logsumexp(zt, dim=1)
    # log p_t and log(1 − p_t) = logsumexp(non-target) − logsumexp(all), exact even when p_t ≈ 1
    tckd = _binary_kl(zt[is_target] - norm_t, torch.logsumexp(others_t, dim=1) - norm_t,
                      zs[is_target] - norm_s, torch.logsumexp(others_s, dim=1) - norm_s)
    log_p, log_q = F.log_softmax(others_t, dim=1), F.log_softmax(others_s, dim=1)
    nckd = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return tckd * (t * t), nckd * (t * t)


def dkd(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, temperature: float,
        alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD: α·TCKD + β·NCKD. (Its KD-weight warm-up is `Distillation.warmup`.)"""
    tckd, nckd = dkd_terms(student, teacher, target, temperature=temperature)
    return alpha * tckd + beta * nckd


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each logit vector: (z − mean) / (std + eps), per sample (torch's std, N−1, as the
    logit-standardization authors' code)."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def lskd(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Logit standardization (Sun et al., CVPR 2024): KD at a base temperature on z-scored student
    and teacher logits, so the student matches the teacher's logit *relations*, not its scale.
    One class has no spread to standardise: zero."""
    if student.shape[1] < 2:
        return student.float().sum(dim=1) * 0
    return kd(standardize(student), standardize(teacher), target, temperature=temperature)


LOSSES = {"kd": kd, "dkd": dkd, "lskd": lskd}


@dataclass(frozen=True)
class Distillation:
    """A registered loss with its parameters, weighted by its warm-up: min((epoch+1)/warmup, 1)
    with the 0-based global epoch (DKD's linear warm-up of the KD weight; 0 = none)."""
    name: str = "kd"
    params: dict = field(default_factory=dict)
    warmup: int = 0

    @classmethod
    def of(cls, name: str, params: dict) -> "Distillation":
        """`params` as configured, `warmup` among them when the loss has one."""
        if name not in LOSSES:
            raise ValueError(f"distillation loss {name!r}: expected one of {sorted(LOSSES)}")
        params = dict(params)
        return cls(name, params, int(params.pop("warmup", 0) or 0))

    def weight(self, epoch: int) -> float:
        return min((epoch + 1) / self.warmup, 1.0) if self.warmup else 1.0

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                 epoch: int) -> torch.Tensor:
        """Per-sample loss [B] of the registered function, times the warm-up weight."""
        per_sample = LOSSES[self.name](student, teacher, target, **self.params)
        w = self.weight(epoch)
        return per_sample if w == 1.0 else per_sample * w


def ed_loss(student_logits: torch.Tensor, targets: torch.Tensor, kd_sum: torch.Tensor | None,
            alpha: float, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """α·CE + (1−α)·KD, with KD already summed over the samples that have a teacher.

    Returns the named terms and their weighted total, so logging and weighting are uniform.
    """
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if kd_sum is None:
        return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros((), device=ce.device)}
    kd_term = kd_sum / student_logits.shape[0]
    return {"loss": alpha * ce + (1 - alpha) * kd_term, "ce": ce.detach(), "kd": kd_term.detach()}
