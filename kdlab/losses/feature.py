"""Feature-based losses: the student matches the teacher's intermediate feature maps."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hint_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """FitNets: Hints for Thin Deep Nets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015).

    Mean squared error between the student's features, already mapped to the teacher's shape
    by the learnable regressor, and the teacher's hint features (mean over all elements, as
    RepDistiller's ``HintLoss``).
    """
    return F.mse_loss(student_feat, teacher_feat)


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of a feature map: the channel mean of |f|^p, flattened and L2-normalised.
    (b, c, *spatial) -> (b, prod(spatial))"""
    return F.normalize(feat.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Paying More Attention to Attention (Zagoruyko & Komodakis, ICLR 2017).

    Mean squared difference of the normalised attention maps of one student/teacher layer
    pair, (b, c, *spatial) each; the larger map is average-pooled to the smaller one's size
    first (as RepDistiller). Channel counts may differ.
    """
    s_size, t_size = student_feat.shape[2:], teacher_feat.shape[2:]
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}[student_feat.dim() - 2]
    if s_size.numel() > t_size.numel():
        student_feat = pool(student_feat, t_size)
    elif s_size.numel() < t_size.numel():
        teacher_feat = pool(teacher_feat, s_size)
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()
