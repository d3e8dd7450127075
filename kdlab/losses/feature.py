"""Feature-based losses: the student matches the teacher's intermediate feature maps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import KdlabError


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


# --- shared by VID, FSP and NST ----------------------------------------------------------------

_ADAPTIVE_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """RepDistiller's size matching of two maps ``(b, c, *spatial)`` of the same rank: when the
    first spatial sizes (H, or L) differ, the larger map is adaptive-average-pooled to the other's
    spatial size (channels may differ). RepDistiller pools to ``(H, H)``, the square map of the
    smaller one (CIFAR's maps are square); here the other's full spatial size, the same on
    square maps. Equal H but different W pools the map with more positions."""
    sa, sb = tuple(a.shape[2:]), tuple(b.shape[2:])
    if sa == sb:
        return a, b
    if (sa[0], math.prod(sa)) > (sb[0], math.prod(sb)):
        return _ADAPTIVE_POOL[a.dim() - 2](a, sb), b
    return a, _ADAPTIVE_POOL[b.dim() - 2](b, sa)


# --- VID -----------------------------------------------------------------------------------------


def vid_log_scale(init_pred_var: float, eps: float = 1e-5) -> float:
    """The variance parameter alpha with softplus(alpha) + eps = ``init_pred_var`` (VID's initial
    variance; RepDistiller ``log(exp(init_pred_var - eps) - 1)``)."""
    return math.log(math.expm1(init_pred_var - eps))


def vid_loss(pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Variational Information Distillation for Knowledge Transfer (Ahn, Hu, Damianou, Lawrence &
    Dai, CVPR 2019).

    The negative log-likelihood of the teacher's map under a Gaussian whose mean the student
    predicts (``pred_mean``, the regressor's output) and whose variance is one learnable value
    per channel, softplus(``log_scale``) + ``eps``: mean over all elements of
    0.5 * ((mu - t)^2 / var + log var). Follows RepDistiller's ``VIDLoss`` (the authors' code):
    the constant 0.5 log(2 pi) is dropped and the reduction is a mean over (b, c, *spatial);
    the paper (eq. 6) sums over channels and positions (a constant factor). Maps of any rank:
    ``(b, c)``, ``(b, c, L)`` or ``(b, c, h, w)``, with ``log_scale`` of shape ``(c,)``; the
    sizes must already match (``match_spatial``).
    """
    var = F.softplus(log_scale) + eps  # (c,): RepDistiller log(1 + exp(alpha)) + eps
    var = var.view(1, -1, *([1] * (target.dim() - 2)))  # (1, c, 1, ...) broadcast over batch and positions
    nll = 0.5 * ((pred_mean - target).pow(2) / var + torch.log(var))  # (b, c, *spatial)
    return nll.mean()


# --- FSP -----------------------------------------------------------------------------------------


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """The FSP (Gram) matrix of two maps of one network, ``(b, c1, *s)`` and ``(b, c2, *s')``
    -> ``(b, c1, c2)``: G[i, j] = the mean over positions of bottom_i * top_j, the larger map
    pooled to the smaller first (``match_spatial``, as RepDistiller)."""
    bottom, top = match_spatial(bottom, top)
    b1, t1 = bottom.flatten(2), top.flatten(2)  # (b, c1, n), (b, c2, n)
    return b1 @ t1.transpose(1, 2) / b1.shape[2]  # (b, c1, c2)


def fsp_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
    Learning (Yim, Joo, Bae & Kim, CVPR 2017).

    FSP matrices of consecutive maps of each network (``feats[i]``, ``feats[i + 1]``; maps
    ``(b, c, *spatial)``), and the mean squared difference of the student's and teacher's,
    summed over the pairs. Follows RepDistiller's ``FSP``: mean over (b, c_i, c_i+1) where the
    paper's eq. 2 sums the squared entries (equal weights lambda_i) and averages over samples;
    RepDistiller's matrices are (c_i+1, c_i), transposed here, which changes nothing. The two
    networks' maps must have the same channels, map by map.
    """
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise KdlabError(
            f"FSP needs the same number (>= 2) of student and teacher maps, got {len(student_feats)} "
            f"and {len(teacher_feats)}"
        )
    total = student_feats[0].new_zeros(())
    for i in range(len(student_feats) - 1):
        g_s = fsp_matrix(student_feats[i], student_feats[i + 1])  # (b, c_i, c_i+1)
        g_t = fsp_matrix(teacher_feats[i], teacher_feats[i + 1])
        if g_s.shape != g_t.shape:
            raise KdlabError(
                f"FSP compares matrices of equal shape: student maps {i}, {i + 1} give {tuple(g_s.shape[1:])}, "
                f"teacher maps give {tuple(g_t.shape[1:])}; the maps need the same channels"
            )
        total = total + (g_s - g_t).pow(2).mean()
    return total


# --- NST -----------------------------------------------------------------------------------------


def _poly2(a: Tensor, b: Tensor) -> Tensor:
    """Polynomial kernel (x . y)^2 between the channel maps of a and b.  (b, ca, n), (b, cb, n) -> (b, ca, cb)"""
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Like What You Like: Knowledge Distill via Neuron Selectivity Transfer (Huang & Wang,
    arXiv 1707.01219, 2017).

    Squared MMD between the student's and teacher's neurons: each channel's map, flattened over
    positions and L2-normalised, is one sample; the kernel is the polynomial (x . y + c)^d with
    d = 2, c = 0. Follows RepDistiller's ``NSTLoss``: maps ``(b, c, *spatial)``, the larger pooled
    to the smaller (``match_spatial``), then mean k(t, t) + mean k(s, s) - 2 mean k(s, t), each
    mean over (b, c, c') (so the batch mean of the paper's per-sample MMD^2, eq. 5); the
    teacher-teacher term is a constant (detached). The paper's objective adds lambda / 2 times
    this; RepDistiller multiplies it by its weight directly (weight w is the paper's lambda = 2w).
    Channel counts may differ.
    """
    s, t = match_spatial(student_feat, teacher_feat)
    s = F.normalize(s.flatten(2), dim=2)  # (b, c_s, n), unit L2 norm per channel map
    t = F.normalize(t.flatten(2), dim=2)  # (b, c_t, n)
    return _poly2(t, t).mean().detach() + _poly2(s, s).mean() - 2 * _poly2(s, t).mean()
