"""Loss terms as pure functions of logits (mdistiller style), so every method shares them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float, reduction: str = "mean") -> torch.Tensor:
    """T² · −Σ softmax(t/T) · log_softmax(z/T), per sample, then reduced.

    The T² factor keeps the gradient scale of the soft term comparable to CE (Hinton et al.).
    """
    t = temperature
    target = F.softmax(teacher_logits.float() / t, dim=1)
    per_sample = -(target * F.log_softmax(student_logits.float() / t, dim=1)).sum(dim=1) * (t * t)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    return per_sample.mean()


def kd_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """Hinton KD over all outputs."""
    return soft_cross_entropy(student_logits, teacher_logits, temperature)


def sliced_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   positions: torch.Tensor, temperature: float, reduction: str = "mean") -> torch.Tensor:
    """KD of a group teacher onto the student's outputs for that group's classes.

    `positions[j]` is the student output position of the teacher's j-th class (group-local order).
    """
    return soft_cross_entropy(student_logits.index_select(1, positions), teacher_logits, temperature,
                              reduction=reduction)


def ed_loss(student_logits: torch.Tensor, targets: torch.Tensor, kd_sum: torch.Tensor | None,
            alpha: float) -> dict[str, torch.Tensor]:
    """α·CE + (1−α)·KD, with KD already summed over the samples that have a teacher.

    Returns the named terms and their weighted total, so logging and weighting are uniform.
    """
    ce = F.cross_entropy(student_logits, targets)
    if kd_sum is None:
        return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros((), device=ce.device)}
    kd = kd_sum / student_logits.shape[0]
    return {"loss": alpha * ce + (1 - alpha) * kd, "ce": ce.detach(), "kd": kd.detach()}
