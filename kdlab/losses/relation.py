"""Relation-based losses: the student matches how the teacher relates samples to each other."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``e``, zero on the diagonal.  (b, d) -> (b, b)"""
    sq = e.pow(2).sum(1)  # (b,)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def _angles(e: Tensor) -> Tensor:
    """Cosines of the angles (e_i - e_j, e_k - e_j) for all triplets, flattened.  (b, d) -> (b^3,)"""
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (b, b, d): e_j - e_i, unit length
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(student_emb: Tensor, teacher_emb: Tensor, distance_weight: float, angle_weight: float) -> Tensor:
    """Relational Knowledge Distillation (Park, Kim, Lu & Cho, CVPR 2019).

    Huber (smooth L1) losses between the student's and teacher's pairwise distances (each
    normalised by its mean non-zero distance) and between their triplet angle cosines,
    weighted ``distance_weight`` and ``angle_weight``. Embeddings are flattened to (b, d).
    """
    s, t = student_emb.flatten(1), teacher_emb.flatten(1)
    with torch.no_grad():
        t_d = _pairwise_distances(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _angles(t)
    s_d = _pairwise_distances(s)
    s_d = s_d / s_d[s_d > 0].mean()
    loss_d = F.smooth_l1_loss(s_d, t_d)
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


def sp_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019).

    The (b, b) Gram matrices of the flattened features, each row L2-normalised; the squared
    Frobenius norm of their difference divided by b^2.
    """
    b = student_feat.shape[0]
    s, t = student_feat.reshape(b, -1), teacher_feat.reshape(b, -1)
    g_s = F.normalize(s @ s.t(), dim=1)  # (b, b)
    g_t = F.normalize(t @ t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


def pkt_loss(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Learning Deep Representations with Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018).

    Cosine similarities between samples, mapped to [0, 1] and normalised per row into
    conditional probabilities; the mean over all entries of the teacher-to-student
    divergence q * log(q / p) (as the reference code).
    """

    def conditional(e: Tensor) -> Tensor:
        e = e.flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + eps)  # zero rows stay zero
        sim = (e @ e.t() + 1.0) / 2.0  # (b, b) in [0, 1]
        return sim / sim.sum(dim=1, keepdim=True)

    p, q = conditional(student_emb), conditional(teacher_emb)
    return (q * torch.log((q + eps) / (p + eps))).mean()


def crd_loss(student_scores: Tensor, teacher_scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

    The NCE objective on the memory-bank scores of both views, (b, 1 + K) each with the
    positive first: scores P are exp(<v, m> / T) / Z, the noise distribution is uniform over
    the ``n_data`` training samples. Each view's loss is -[sum log D(positive) + sum
    log(1 - D(negatives))] / b with D(P) = P / (P + K / n_data); the two are added.
    """

    def nce(x: Tensor) -> Tensor:
        b, k = x.shape[0], x.shape[1] - 1
        noise = k / n_data  # K * P_noise
        log_d1 = torch.log(x[:, 0] / (x[:, 0] + noise + eps))  # (b,)
        log_d0 = torch.log(noise / (x[:, 1:] + noise + eps))  # (b, K)
        return -(log_d1.sum() + log_d0.sum()) / b

    return nce(student_scores) + nce(teacher_scores)


def cc_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Correlation Congruence for Knowledge Distillation (Peng, Jin, Liu, Zhou, Wu, Liu, Li &
    Zhang, ICCV 2019).

    RepDistiller's ``Correlation``, the code the CRD benchmark's CC numbers come from (its
    docstring: the authors shared their code): with delta = |e_s - e_t| per sample, ``(b, d)``
    embeddings (flattened), the mean over consecutive samples i = 0 .. b-2 of
    sum_d delta[i, d] * delta[i + 1, d]. This is not the paper's formula: the paper matches the
    (b, b) correlation matrices of the two models' embeddings, k(F_i, F_j) a Gaussian RBF kernel
    approximated by its order-P Taylor series, as 1/b^2 ||psi(F_t) - psi(F_s)||^2. With fewer
    than two samples there is no pair and the loss is 0 (RepDistiller would give NaN).
    """
    delta = (student_emb - teacher_emb).abs().flatten(1)  # (b, d)
    if len(delta) < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(1).mean()  # (b - 1,) -> scalar


def cc_kernel_loss(student_emb: Tensor, teacher_emb: Tensor, gamma: float = 0.4, max_p: int = 2) -> Tensor:
    """Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019), the paper's form.

    Each model's (b, b) correlation matrix of its ``(b, d)`` embeddings (flattened), with the
    Gaussian RBF kernel approximated by its order-``max_p`` Taylor series,
    k(x, y) = exp(-2 gamma) sum_{p=0..max_p} (2 gamma)^p / p! (x . y)^p, then
    1/b^2 ||C_s - C_t||_F^2 (the paper's eq. 7; torchdistill's ``CCKDLoss``, defaults gamma 0.4
    and max_p 2, takes the norm without squaring it). kdlab's ``cc`` method uses RepDistiller's
    ``cc_loss`` by default, the code behind the CRD table; ``method.terms.cc.kernel=gaussian``
    selects this one.
    """
    b = student_emb.shape[0]

    def correlation(e: Tensor) -> Tensor:
        dots = e.flatten(1) @ e.flatten(1).t()  # (b, b)
        series = sum((2 * gamma) ** p / math.factorial(p) * dots**p for p in range(max_p + 1))
        return math.exp(-2 * gamma) * series

    return (correlation(student_emb) - correlation(teacher_emb)).pow(2).sum() / (b * b)
