"""Response-based losses: the student matches the teacher's outputs (logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import KdlabError


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit Standardization in Knowledge Distillation (Sun, Ren, Li, Wang & Cao, CVPR 2024).

    The Z-score of each row of logits, ``(z - mean(z)) / (eps + std(z))``, before the temperature
    divides them: teacher and student then match relations between logits, not their range. As
    the authors' code (logit-standardization-KD, mdistiller/distillers/KD.py ``normalize``): the
    standard deviation is the unbiased one (n - 1) and ``eps = 1e-7`` is added to it, not under a
    square root; the temperature applied afterwards is the paper's base temperature.
    """
    mean = logits.mean(dim=-1, keepdim=True)  # (b, 1)
    std = logits.std(dim=-1, keepdim=True)  # (b, 1), unbiased
    return (logits - mean) / (eps + std)  # (b, c)


def _one_temperature(temperature: float | Tensor) -> float | Tensor:
    """A float as it is; a learned temperature of shape (1,) (CTKD's global one) as a 0-dim tensor,
    so that the loss stays a scalar."""
    if isinstance(temperature, Tensor) and temperature.dim() == 1 and temperature.numel() == 1:
        return temperature.reshape(())
    return temperature


def _per_sample(temperature: float | Tensor, batch: int, loss: str) -> bool:
    """Whether ``temperature`` is one per sample, shape (b, 1) (CTKD's instance-wise one)."""
    if not isinstance(temperature, Tensor) or temperature.dim() == 0 or temperature.shape == (1,):
        return False
    if temperature.shape != (batch, 1):
        raise KdlabError(f"{loss} takes a temperature of shape (), (1,) or (batch, 1), got {tuple(temperature.shape)}")
    return True


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015).

    KL(q_T || p_T) between the temperature-softened teacher and student distributions,
    averaged over the batch and multiplied by T^2 so that its gradients keep their scale
    as T changes.

    ``temperature`` may be a learned tensor (CTKD, ``kdlab.methods.curriculum``): of shape (1,),
    the same loss; of shape (b, 1), one per sample, the loss of the CTKD authors' README for their
    instance-wise temperature (``KL_Loss`` summed over the samples, divided by b): each row's
    ``T_i^2 sum_c q_c (log q_c - log p_c)`` where ``q = softmax(z_t / T_i) + 1e-7`` (their epsilon,
    added to the teacher's probabilities both as weight and inside the log), averaged over the batch.
    """
    if _per_sample(temperature, student_logits.shape[0], "kd_loss"):
        log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (b, c)
        q = F.softmax(teacher_logits / temperature, dim=-1) + 1e-7  # (b, c), the authors' epsilon
        per_row = (q * (q.log() - log_p)).sum(-1)  # (b,)
        return (temperature.squeeze(-1) ** 2 * per_row).mean()
    temperature = _one_temperature(temperature)
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (b, c)
    log_q = F.log_softmax(teacher_logits / temperature, dim=-1)  # (b, c)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def mse_logits_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Do Deep Nets Really Need to be Deep? (Ba & Caruana, 2014).

    Regression of the student's logits onto the teacher's: mean squared error over all
    logits (batch and classes).
    """
    return F.mse_loss(student_logits, teacher_logits)  # mean over (b, c)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float | Tensor,
) -> Tensor:
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

    KD split into TCKD, the KL between the binary (target, non-target) distributions, and
    NCKD, the KL between the distributions over the non-target classes; returns
    ``alpha * TCKD + beta * NCKD``, each summed over classes, averaged over the batch and
    multiplied by T^2 (as mdistiller). Computed in log space, so saturated logits stay finite.

    ``temperature`` may be a learned tensor (CTKD, ``kdlab.methods.curriculum``): of shape (1,),
    the same loss (CTKD's ``DKDloss`` with its global temperature); of shape (b, 1), one per sample,
    each row's ``alpha TCKD_i + beta NCKD_i`` times its ``T_i^2``, averaged over the batch (kdlab's
    form: the CTKD authors publish no instance-wise DKD).
    """
    per_sample = _per_sample(temperature, student_logits.shape[0], "dkd_loss")
    temperature = _one_temperature(temperature)
    gt = F.one_hot(target, student_logits.shape[-1]).bool()  # (b, c)
    s, t = student_logits / temperature, teacher_logits / temperature
    log_ps, log_pt = F.log_softmax(s, -1), F.log_softmax(t, -1)  # (b, c)

    def binary(log_p: Tensor) -> Tensor:  # log of (p_target, 1 - p_target), (b, 2)
        return torch.stack(
            [log_p.masked_fill(~gt, -torch.inf).logsumexp(-1), log_p.masked_fill(gt, -torch.inf).logsumexp(-1)], -1
        )

    log_bs, log_bt = binary(log_ps), binary(log_pt)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(-1)  # (b,)
    # distributions over the non-target classes: the target's entry is masked out (0 after the fill)
    log_ns = F.log_softmax(s.masked_fill(gt, -torch.inf), -1).masked_fill(gt, 0.0)  # (b, c)
    log_nt = F.log_softmax(t.masked_fill(gt, -torch.inf), -1).masked_fill(gt, 0.0)
    nckd = (log_nt.exp().masked_fill(gt, 0.0) * (log_nt - log_ns)).sum(-1)  # (b,)
    if per_sample:
        return ((alpha * tckd + beta * nckd) * temperature.squeeze(-1) ** 2).mean()
    return (alpha * tckd.mean() + beta * nckd.mean()) * temperature**2


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.  (n, m) -> (n,)"""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


def dist_loss(
    student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, temperature: float | Tensor
) -> Tensor:
    """Knowledge Distillation from A Stronger Teacher (DIST; Huang, You, Wang, Qian & Xu, NeurIPS 2022).

    Matches relations instead of exact probabilities: ``beta`` times the inter-class term
    (1 - mean Pearson correlation between each input's student and teacher class
    distributions) plus ``gamma`` times the intra-class term (the same over each class's
    column across the batch), both on softmax(z / T) and multiplied by T^2.

    ``temperature`` may be a learned tensor of shape (1,) (CTKD's global temperature,
    ``kdlab.methods.curriculum``): the same loss. One per sample has no form here: the intra-class
    relation spans the batch.
    """
    if _per_sample(temperature, student_logits.shape[0], "dist_loss"):
        raise KdlabError("dist_loss takes one temperature for the batch, not one per sample (shape (b, 1))")
    temperature = _one_temperature(temperature)
    ps = F.softmax(student_logits / temperature, -1)  # (b, c)
    pt = F.softmax(teacher_logits / temperature, -1)  # (b, c)
    inter = 1 - _pearson_rows(ps, pt).mean()
    intra = 1 - _pearson_rows(ps.t(), pt.t()).mean()  # (c, b): one row per class
    return temperature**2 * (beta * inter + gamma * intra)


def tf_kd_loss(student_logits: Tensor, target: Tensor, correct_prob: float, temperature: float) -> Tensor:
    """Revisiting Knowledge Distillation via Label Smoothing Regularization (Tf-KD_reg;
    Yuan, Tay, Li, Wang & Feng, CVPR 2020).

    A teacher-free, virtual teacher: ``correct_prob`` on the label, the rest spread evenly,
    softened as the reference code does (softmax of those probabilities divided by T); the
    KL to the student's distribution, averaged over all batch x class elements (the
    reference's ``nn.KLDivLoss()`` default), so its weight carries the reference's multiplier.
    """
    c = student_logits.shape[-1]
    virtual = torch.full_like(student_logits, (1 - correct_prob) / (c - 1))  # (b, c)
    virtual.scatter_(1, target[:, None], correct_prob)
    q = F.softmax(virtual / temperature, -1)
    return F.kl_div(F.log_softmax(student_logits, -1), q, reduction="sum") / student_logits.numel()
