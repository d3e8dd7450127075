"""Losses of the methods with learned connectors: AB, FT, OFD and ReviewKD.

The connectors themselves (regressors, paraphraser/translator, review fusion) are learnable
parts of the terms (``kdlab.methods.connector``); the functions here take the features after
them. Maps are (b, c, L) or (b, c, h, w).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import KdlabError

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}


def _pool(feat: Tensor, size: Sequence[int]) -> Tensor:
    """Adaptive average pooling of a (b, c, *spatial) map to ``size``, 1-D or 2-D."""
    dims = feat.dim() - 2
    if dims not in _POOL:
        raise KdlabError(f"feature maps are (b, c, L) or (b, c, h, w); got shape {tuple(feat.shape)}")
    return _POOL[dims](feat, tuple(size))


def _same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise KdlabError(f"{name} compares maps of one shape; got {tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------------------------------------
# AB: activation boundaries
# ---------------------------------------------------------------------------------------------


def ab_stage_loss(student_feat: Tensor, teacher_feat: Tensor, margin: float = 1.0) -> Tensor:
    """The alternative (hinge-like squared) loss of one stage, summed over every element.

    (b, c, *spatial) pre-activations, the student's already through its connector. Where the
    teacher neuron is inactive (t <= 0) the student is pushed below -margin, where it is active
    (t > 0) above +margin:
    (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0].
    """
    _same_shape("AB", student_feat, teacher_feat)
    s, active = student_feat, teacher_feat > 0
    off = (s + margin).pow(2) * ((s > -margin) & ~active)  # (b, c, *spatial)
    on = (s - margin).pow(2) * ((s <= margin) & active)
    return (off + on).sum()


def ab_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons
    (Heo, Lee, Yun & Choi, AAAI 2019).

    Follows RepDistiller ``distiller_zoo/AB.py`` (``ABLoss``), the code of the CRD benchmark:
    over n stage pairs (shallow to deep, the student's pre-activations through its connectors,
    the teacher's pre-activations), stage i gets weight 2^(i - n + 1) (the deepest 1, each
    shallower one half the next), every stage sum is divided by the batch size and scaled by
    3 / 1000; the stages' losses are summed. The authors' code (bhheo/AB_distillation) uses the
    same weights and 1 / 1000 without the factor 3 (RepDistiller's rescaling); the paper
    states the loss without the constant.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise KdlabError(f"AB pairs stages: got {len(student_feats)} student and {len(teacher_feats)} teacher maps")
    n, b = len(student_feats), student_feats[0].shape[0]
    total = student_feats[0].new_zeros(())
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        total = total + 2.0 ** (i - n + 1) * ab_stage_loss(s, t, margin) / b / 1000 * 3
    return total


# ---------------------------------------------------------------------------------------------
# FT: factor transfer
# ---------------------------------------------------------------------------------------------


def ft_factor(factor: Tensor, p: float = 2.0) -> Tensor:
    """RepDistiller's normalisation of a factor: the channel mean of f^p, flattened and
    L2-normalised. (b, c, *spatial) -> (b, prod(spatial))"""
    return F.normalize(factor.pow(p).mean(1).flatten(1), dim=1)


def ft_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Paraphrasing Complex Network: Network Compression via Factor Transfer (Kim, Park &
    Kwak, NeurIPS 2018).

    Follows RepDistiller ``distiller_zoo/FT.py`` (``FactorTransfer``, p1=2, p2=1): the factors
    (b, c, *spatial) -- the translator's output for the student, the paraphraser's encoding for
    the teacher -- are reduced by ``ft_factor`` (channel mean of squares, L2-normalised per
    sample) and compared by the mean absolute difference. A larger map is average-pooled to
    the smaller one's size first (RepDistiller compares heights and pools to a square). Code
    and paper differ: the paper (and the authors' Jangho-Kim/Factor-Transfer-pytorch) L2-
    normalises the whole flattened factor, with no channel mean of squares.
    """
    s_size, t_size = student_factor.shape[2:], teacher_factor.shape[2:]
    if s_size.numel() > t_size.numel():
        student_factor = _pool(student_factor, t_size)
    elif s_size.numel() < t_size.numel():
        teacher_factor = _pool(teacher_factor, s_size)
    return (ft_factor(student_factor) - ft_factor(teacher_factor)).abs().mean()


# ---------------------------------------------------------------------------------------------
# OFD: overhaul of feature distillation
# ---------------------------------------------------------------------------------------------


def ofd_margin(std: Tensor, mean: Tensor) -> Tensor:
    """Per-channel margins of OFD: the expectation of the negative responses of a Gaussian
    N(mean, std^2), E[x | x < 0] = mean - |std| phi(mean/|std|) / Phi(-mean/|std|); -3|std| where
    Phi(-mean/|std|) <= 0.001 (hardly any negative response). (c,), (c,) -> (c,)

    From a teacher's BatchNorm before its ReLU, ``std`` is the BN weight and ``mean`` its bias
    (clovaai/overhaul-distillation ``get_margin_from_BN``, mdistiller ``OFD.init_ofd_modules``).
    A channel of zero std and negative mean gets its mean, one of zero std and mean >= 0 gets 0.
    """
    s, m = std.detach().double().abs(), mean.detach().double()
    z = m / s
    cdf = torch.special.ndtr(-z)
    density = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -s * density / cdf + m, -3 * s)
    margin = torch.where(s > 0, margin, torch.where(m < 0, m, torch.zeros_like(m)))
    return margin.to(std.dtype)


def ofd_stage_loss(student_feat: Tensor, teacher_feat: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance of one stage: mean over the batch of the sum over channels and
    positions. (b, c, *spatial) each, ``margin`` (c,), the student already through its connector.

    With m the teacher channel's margin:
    (s - m)^2 [s > m and t <= m] + (s - t)^2 [s > t and m < t <= 0] + (s - t)^2 [t > 0]:
    where the teacher is positive the student matches it; where it is negative the student is
    only pushed down, to the teacher's value or, below the margin, to the margin.
    """
    _same_shape("OFD", student_feat, teacher_feat)
    if margin.shape != (student_feat.shape[1],):
        raise KdlabError(f"OFD needs one margin per channel ({student_feat.shape[1]}); got {tuple(margin.shape)}")
    s, t = student_feat, teacher_feat
    m = margin.to(s).view(1, -1, *([1] * (s.dim() - 2)))  # (1, c, 1...)
    loss = (
        (s - m).pow(2) * ((s > m) & (t <= m))
        + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0))
        + (s - t).pow(2) * (t > 0)
    )  # (b, c, *spatial)
    return loss.mean(0).sum()


def ofd_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], margins: Sequence[Tensor]) -> Tensor:
    """A Comprehensive Overhaul of Feature Distillation (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019).

    Follows mdistiller ``mdistiller/distillers/OFD.py`` (``ofd_loss``, ``feat_loss``), the code of
    the DKD paper's table: n stage pairs of pre-ReLU maps, shallow to deep, the student's
    through its connector; each teacher map is average-pooled to its student map's spatial size
    and compared by ``ofd_stage_loss``; stage i is divided by 2^(n - i - 1) (the deepest by 1)
    and the stages summed. mdistiller's 0.001 (``FEAT_WEIGHT``) is the term's weight. The
    authors' clovaai/overhaul-distillation writes the same partial L2 as
    mse(s, max(t, m)) [s > max(t, m) or t > 0], summed and divided by batch size and 1000 in
    the training loop, without the pooling (its CIFAR pairs have maps of one size).
    """
    if not len(student_feats) == len(teacher_feats) == len(margins) or not student_feats:
        raise KdlabError(
            f"OFD pairs stages: got {len(student_feats)} student maps, {len(teacher_feats)} teacher maps "
            f"and {len(margins)} margins"
        )
    n = len(student_feats)
    total = student_feats[0].new_zeros(())
    for i, (s, t, m) in enumerate(zip(student_feats, teacher_feats, margins)):
        if t.shape[2:] != s.shape[2:]:
            t = _pool(t, s.shape[2:])
        total = total + ofd_stage_loss(s, t.detach(), m) / 2 ** (n - i - 1)
    return total


# ---------------------------------------------------------------------------------------------
# ReviewKD: hierarchical context loss
# ---------------------------------------------------------------------------------------------


def hcl_loss(
    student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)
) -> Tensor:
    """Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao & Jia, CVPR 2021): the
    hierarchical context loss.

    Follows mdistiller ``mdistiller/distillers/ReviewKD.py`` (``hcl_loss``; the same as
    dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` ``hcl``). For each pair of maps
    (b, c, *spatial) of one shape (the student's after the review fusion): the MSE of the maps
    (weight 1), plus the MSE of both maps average-pooled to l x l (l per side; l in 1-D) for each
    pyramid level l in ``levels`` smaller than the map's first spatial size (height or length),
    with weights 1/2, 1/4, ... in the order of the levels taken; the weighted sum is divided by
    the sum of the weights used. Pairs are summed.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise KdlabError(f"ReviewKD pairs maps: got {len(student_feats)} student and {len(teacher_feats)} teacher maps")
    total = student_feats[0].new_zeros(())
    for s, t in zip(student_feats, teacher_feats):
        _same_shape("ReviewKD's HCL", s, t)
        loss, weight, norm = F.mse_loss(s, t), 1.0, 1.0
        dims, size = s.dim() - 2, s.shape[2] if s.dim() > 2 else 1
        for level in levels:
            if level >= size:
                continue
            weight /= 2
            loss = loss + F.mse_loss(_pool(s, (level,) * dims), _pool(t, (level,) * dims)) * weight
            norm += weight
        total = total + loss / norm
    return total
