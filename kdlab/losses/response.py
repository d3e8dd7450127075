"""Response-based losses: the student matches the teacher's outputs (logits)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Distilling the Knowledge in a Neural Network (Hinton, Vinyals & Dean, 2015).

    KL(q_T || p_T) between the temperature-softened teacher and student distributions,
    averaged over the batch and multiplied by T^2 so that its gradients keep their scale
    as T changes.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=-1)  # (b, c)
    log_q = F.log_softmax(teacher_logits / temperature, dim=-1)  # (b, c)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def mse_logits_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Do Deep Nets Really Need to be Deep? (Ba & Caruana, 2014).

    Regression of the student's logits onto the teacher's: mean squared error over all
    logits (batch and classes).
    """
    return F.mse_loss(student_logits, teacher_logits)  # mean over (b, c)
