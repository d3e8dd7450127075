"""Relation-based losses (``kdlab.losses.relation``): RKD, similarity preserving, PKT, CRD and CC.

Every reference below is written with plain Python floats / numpy float64 loops straight from the papers'
(and their reference code's) definitions, never by re-running the torch calls the implementations use.
Alongside: hand-computed tiny cases, limiting cases, invariances, gradients and numerical stability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses import crd_loss, pkt_loss, rkd_loss, sp_loss
from kdlab.losses.relation import cc_kernel_loss, cc_loss
from tests.reference import F64, numeric_grad, randn, seeded

# ---------------------------------------------------------------------------------------------
# independent references (numpy float64 / python floats)
# ---------------------------------------------------------------------------------------------


def ref_pairwise(e, eps: float = 1e-12) -> np.ndarray:
    """Off-diagonal distances sqrt(max(|e_i - e_j|^2, eps)), as RepDistiller's ``pdist``, each divided by
    the mean of the non-zero entries. The clamp matters only for identical rows: their distance is
    sqrt(1e-12) = 1e-6 > 0, so (as in the reference code) it counts in the mean."""
    e = np.asarray(e, np.float64)
    b = len(e)
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if i != j:
                d[i, j] = math.sqrt(max(float(((e[i] - e[j]) ** 2).sum()), eps))
    return d / d[d > 0].mean()


def ref_angles(e) -> np.ndarray:
    e = np.asarray(e, np.float64)
    b = len(e)

    def unit(v):
        n = math.sqrt(float((v * v).sum()))
        return v / n if n > 0 else v * 0.0

    return np.array([unit(e[j] - e[i]) @ unit(e[k] - e[i]) for i in range(b) for j in range(b) for k in range(b)])


def huber(x, y) -> float:
    d = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).reshape(-1)
    return float(np.mean([0.5 * v * v if v < 1 else v - 0.5 for v in d]))


def ref_rkd(s, t, wd, wa) -> float:
    s, t = np.asarray(s).reshape(len(s), -1), np.asarray(t).reshape(len(t), -1)
    return wd * huber(ref_pairwise(s), ref_pairwise(t)) + wa * huber(ref_angles(s), ref_angles(t))


def ref_sp(s, t) -> float:
    b = len(s)

    def gram(f):
        f = np.asarray(f, np.float64).reshape(b, -1)
        g = np.array([[float(f[i] @ f[j]) for j in range(b)] for i in range(b)])
        norms = np.sqrt((g * g).sum(1, keepdims=True))
        return np.where(norms > 0, g / np.where(norms > 0, norms, 1.0), 0.0)

    return float(((gram(t) - gram(s)) ** 2).sum() / b**2)


def ref_pkt(s, t, eps: float = 1e-7) -> float:
    def conditional(e):
        e = np.asarray(e, np.float64).reshape(len(e), -1)
        e = np.stack([r / (math.sqrt(float(r @ r)) + eps) for r in e])
        b = len(e)
        sim = np.array([[(float(e[i] @ e[j]) + 1) / 2 for j in range(b)] for i in range(b)])
        return np.stack([row / row.sum() for row in sim])

    p, q = conditional(s), conditional(t)
    b = len(p)
    return sum(q[i, j] * math.log((q[i, j] + eps) / (p[i, j] + eps)) for i in range(b) for j in range(b)) / b**2


def ref_nce(x, n_data, eps: float = 1e-7) -> float:
    x = np.asarray(x, np.float64)
    m = x.shape[1] - 1
    mpn = m / n_data
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + mpn + eps))
        total += sum(math.log(mpn / (v + mpn + eps)) for v in row[1:])
    return -total / len(x)


# ---------------------------------------------------------------------------------------------
# RKD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wd,wa", [(1.0, 0.0), (0.0, 1.0), (25.0, 50.0)])
def test_rkd_matches_hand_computation(wd, wa):
    s, t = randn(5, 4, seed=24), randn(5, 6, seed=25) * 3
    assert rkd_loss(s, t, wd, wa).item() == pytest.approx(ref_rkd(s.numpy(), t.numpy(), wd, wa), rel=1e-9)
    # large differences exercise the linear branch of the Huber loss
    s2 = randn(4, 3, seed=26)
    t2 = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]], dtype=F64)
    assert rkd_loss(s2, t2, 1.0, 2.0).item() == pytest.approx(ref_rkd(s2.numpy(), t2.numpy(), 1.0, 2.0), rel=1e-9)
    # (b, c, h, w) embeddings are flattened to (b, c*h*w)
    s4, t4 = randn(3, 2, 2, 2, seed=27), randn(3, 8, seed=28)
    assert rkd_loss(s4, t4, 1.0, 2.0).item() == pytest.approx(ref_rkd(s4.numpy(), t4.numpy(), 1.0, 2.0), rel=1e-9)


def test_rkd_tiny_case_by_hand():
    # 3 points on a line: student 0, 1, 2 (distances 1, 1, 2; mean non-zero = 4/3 -> 3/4, 3/4, 3/2);
    # teacher 0, 1, 3 (distances 1, 2, 3; mean 2 -> 1/2, 1, 3/2). Each unordered pair appears twice in
    # the 3x3 matrix (9 entries): differences 1/4 (pair 01), 1/4 (pair 12), 0 (pair 02), all < 1, so
    # loss_d = 4 * 0.5 * (1/4)^2 / 9 = 1/72.
    # Angles: all cosines are +1, -1 or 0 (collinear points; 0 for a zero vector). From either end point
    # the other two lie on the same side (+1), from the middle point on opposite sides (-1), in both
    # embeddings alike, so every cosine agrees and loss_a = 0.
    s = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)
    t = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    assert rkd_loss(s, t, 1.0, 0.0).item() == pytest.approx(1 / 72, rel=1e-9)
    assert rkd_loss(s, t, 0.0, 1.0).item() == pytest.approx(0.0, abs=1e-15)


def test_rkd_limits_and_invariances():
    s, t = randn(6, 4, seed=29), randn(6, 5, seed=30)
    base = rkd_loss(s, t, 25.0, 50.0).item()
    assert base > 0
    assert rkd_loss(s, s.clone(), 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-12)
    # distances are normalised by their mean and angles are scale-free: scaling either side changes
    # nothing; neither does a translation or a rotation (orthogonal map) of either side
    assert rkd_loss(s * 0.01, t * 100.0, 25.0, 50.0).item() == pytest.approx(base, rel=1e-8)
    assert rkd_loss(s + 7.0, t - 3.0, 25.0, 50.0).item() == pytest.approx(base, rel=1e-6)
    q, _ = torch.linalg.qr(randn(4, 4, seed=31))
    assert rkd_loss(s @ q, t, 25.0, 50.0).item() == pytest.approx(base, rel=1e-8)


def test_rkd_identical_rows_stay_finite_and_teacher_gets_no_gradient():
    s = randn(5, 4, seed=32, dtype=torch.float32)
    s[1] = s[0]
    s.requires_grad_()
    t = randn(5, 4, seed=33, dtype=torch.float32)
    t[3] = t[2]
    t.requires_grad_()
    loss = rkd_loss(s, t, 25.0, 50.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
    # and the value still matches the reference code: a zero difference vector has cosine 0, and the
    # distance between identical rows is clamped to sqrt(1e-12) = 1e-6, which is "non-zero" and so is
    # counted (as ~0) in the normalising mean -- exactly what RepDistiller's pdist + d[d > 0].mean() do.
    # (Dropping those pairs from the mean instead would give 3.847 here instead of 4.133.)
    # The value is checked in float64: in float32 the squared distance of two identical rows is a
    # rounding residual (|a|^2 + |b|^2 - 2ab) that depends on the CPU's FMA / vector width, and its
    # square root (~1e-4 instead of 1e-6) shifts the normalising mean by ~1e-4 relative.
    s64, t64 = s.detach().double(), t.detach().double()
    ref = ref_rkd(s64.numpy(), t64.numpy(), 25.0, 50.0)
    assert rkd_loss(s64, t64, 25.0, 50.0).item() == pytest.approx(ref, rel=1e-9)
    assert loss.item() == pytest.approx(ref, rel=1e-3)  # float32: finite and close, not bit-exact


# ---------------------------------------------------------------------------------------------
# Similarity preserving
# ---------------------------------------------------------------------------------------------


def test_sp_matches_hand_computation():
    s, t = randn(5, 3, 2, 2, seed=34), randn(5, 7, seed=35)
    assert sp_loss(s, t).item() == pytest.approx(ref_sp(s.numpy(), t.numpy()), rel=1e-10)
    s32, t32 = s.float(), t.float()
    assert sp_loss(s32, t32).item() == pytest.approx(ref_sp(s.numpy(), t.numpy()), rel=1e-4)


def test_sp_tiny_case_by_hand():
    # b = 2, d = 1. Student f = (1, 2): G = [[1, 2], [2, 4]]; both rows normalise to (1, 2)/sqrt 5.
    # Teacher f = (1, -1): G = [[1, -1], [-1, 1]] -> rows (1, -1)/sqrt 2 and (-1, 1)/sqrt 2.
    # row 0: (1/sqrt2 - 1/sqrt5)^2 + (-1/sqrt2 - 2/sqrt5)^2 = 2 + 2/sqrt10
    # row 1: (-1/sqrt2 - 1/sqrt5)^2 + (1/sqrt2 - 2/sqrt5)^2 = 2 - 2/sqrt10
    # sum = 4, divided by b^2 = 4 -> 1
    s = torch.tensor([[1.0], [2.0]], dtype=F64)
    t = torch.tensor([[1.0], [-1.0]], dtype=F64)
    assert sp_loss(s, t).item() == pytest.approx(1.0, rel=1e-12)


def test_sp_limits_invariances_symmetry():
    s, t = randn(6, 4, seed=36), randn(6, 9, seed=37)
    base = sp_loss(s, t).item()
    assert base > 0
    assert sp_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-15)
    # a positive rescaling of one side scales its Gram matrix, removed by the row normalisation
    assert sp_loss(s * 1e-3, t).item() == pytest.approx(base, rel=1e-10)
    assert sp_loss(s, t * 42.0).item() == pytest.approx(base, rel=1e-10)
    assert sp_loss(t, s).item() == pytest.approx(base, rel=1e-12)  # symmetric
    for zs, zt in (
        (torch.zeros(4, 3), torch.zeros(4, 3)),
        (torch.zeros(4, 3), randn(4, 3, dtype=torch.float32)),
    ):
        assert torch.isfinite(sp_loss(zs, zt))
    # zero student: G_s = 0, each teacher row has unit norm -> sum of squares b, divided by b^2
    assert sp_loss(torch.zeros(4, 3), randn(4, 3, dtype=torch.float32)).item() == pytest.approx(1 / 4, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# PKT
# ---------------------------------------------------------------------------------------------


def test_pkt_matches_hand_computation():
    s, t = randn(5, 3, 2, seed=38), randn(5, 4, seed=39)
    assert pkt_loss(s, t).item() == pytest.approx(ref_pkt(s.numpy(), t.numpy()), rel=1e-10)
    assert pkt_loss(s.float(), t.float()).item() == pytest.approx(ref_pkt(s.numpy(), t.numpy()), rel=1e-4)


def test_pkt_tiny_case_by_hand_and_asymmetry():
    # student rows (1, 0), (0, 1): cosines [[1, 0], [0, 1]] -> (c + 1)/2 = [[1, 1/2], [1/2, 1]]
    #   -> p = [[2/3, 1/3], [1/3, 2/3]];
    # teacher rows (1, 0), (1, 0): cosines all 1 -> q = 1/2 everywhere.
    # loss = mean of 1/2 log(q/p) = 1/4 * (1/2 log(3/4) + 1/2 log(3/2)) * 2 = 1/4 log(9/8)
    # swapped: mean of p log(p / (1/2)) = 1/2 * (2/3 log(4/3) + 1/3 log(2/3))
    # (the eps = 1e-7 terms move both by < 1e-6)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64)
    ab = 0.25 * math.log(9 / 8)
    ba = 0.5 * (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3))
    assert pkt_loss(a, b).item() == pytest.approx(ab, abs=1e-6)
    assert pkt_loss(b, a).item() == pytest.approx(ba, abs=1e-6)
    assert abs(ab - ba) > 1e-3  # asymmetric


def test_pkt_limits_invariances_asymmetry():
    s, t = randn(6, 4, seed=40), randn(6, 5, seed=41)
    base = pkt_loss(s, t).item()
    assert base > 0
    assert pkt_loss(s, s.clone()).item() == 0.0  # q log((q + eps)/(q + eps)) = 0 exactly
    # rows are normalised by (norm + eps), so a positive rescaling is invariant up to the eps
    assert pkt_loss(s * 10.0, t).item() == pytest.approx(base, rel=1e-6)
    assert pkt_loss(s, t * 0.1).item() == pytest.approx(base, rel=1e-5)
    assert pkt_loss(t, s).item() != pytest.approx(base, rel=1e-3)
    # zero embeddings: the rows stay zero, cosines 0, p = q = 1/b everywhere
    z = torch.zeros(4, 3)
    assert pkt_loss(z, z).item() == 0.0
    tz = randn(4, 3, seed=47)
    zt = pkt_loss(z, tz.float())
    assert torch.isfinite(zt) and zt.item() >= 0
    assert zt.item() == pytest.approx(ref_pkt(np.zeros((4, 3)), tz.numpy()), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# CRD
# ---------------------------------------------------------------------------------------------


def test_crd_tiny_case_by_hand():
    # b = 2, K = 2, n_data = 10: m * Pn = 2/10 = 0.2 (eps = 1e-7 ignored, it moves the result < 1e-5).
    # student rows (0.8, 0.2, 0.2): log(0.8/1.0) + 2 log(0.2/0.4) = log 0.8 - 2 log 2
    #              (0.2, 0.6, 0.6): log(0.2/0.4) + 2 log(0.2/0.8) = -5 log 2
    #   -> nce_s = -(log 0.8 - 7 log 2) / 2
    # teacher rows (0.2, 0.2, 0.2): -3 log 2;  (0.8, 0.2, 0.2): log 0.8 - 2 log 2
    #   -> nce_t = -(log 0.8 - 5 log 2) / 2
    # total = 6 log 2 - log 0.8 = log 80
    s = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.6, 0.6]], dtype=F64)
    t = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.2, 0.2]], dtype=F64)
    assert crd_loss(s, t, 10).item() == pytest.approx(math.log(80.0), abs=1e-5)
    assert crd_loss(s, t, 10).item() == pytest.approx(ref_nce(s.numpy(), 10) + ref_nce(t.numpy(), 10), rel=1e-12)


def test_crd_matches_hand_computation():
    s = torch.rand(4, 17, generator=seeded(42), dtype=F64) * 0.01 + 1e-4
    t = torch.rand(4, 17, generator=seeded(43), dtype=F64) * 0.01 + 1e-4
    for n_data in (100, 50000):
        expected = ref_nce(s.numpy(), n_data) + ref_nce(t.numpy(), n_data)
        assert crd_loss(s, t, n_data).item() == pytest.approx(expected, rel=1e-10)
        assert crd_loss(s.float(), t.float(), n_data).item() == pytest.approx(expected, rel=1e-5)


def test_crd_decreases_as_positive_dominates():
    neg = torch.full((3, 4), 0.05, dtype=F64)
    t = torch.cat([torch.full((3, 1), 0.3, dtype=F64), neg], 1)
    losses = [crd_loss(torch.cat([torch.full((3, 1), p, dtype=F64), neg], 1), t, 20).item() for p in (0.01, 0.1, 1, 10)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    # ... and as the negatives shrink with the positive fixed
    pos = torch.full((3, 1), 0.3, dtype=F64)
    losses = [crd_loss(torch.cat([pos, torch.full((3, 4), n, dtype=F64)], 1), t, 20).item() for n in (1, 0.1, 0.01)]
    assert all(a > b for a, b in zip(losses, losses[1:]))
    # the two views enter symmetrically
    s = torch.cat([pos * 2, neg], 1)
    assert crd_loss(s, t, 20).item() == pytest.approx(crd_loss(t, s, 20).item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# CC (RepDistiller's Correlation)
# ---------------------------------------------------------------------------------------------


def ref_cc(s, t) -> float:
    """RepDistiller's Correlation: delta = |e_s - e_t|; mean over i < b-1 of sum_d delta[i, d] delta[i+1, d]."""
    s = np.asarray(s, np.float64).reshape(len(s), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    b, d = s.shape
    terms = [sum(abs(s[i, k] - t[i, k]) * abs(s[i + 1, k] - t[i + 1, k]) for k in range(d)) for i in range(b - 1)]
    return sum(terms) / len(terms)


def test_cc_tiny_case_by_hand():
    # teacher 0, student rows (1, 0), (0, 2), (3, 3): consecutive products 1*0 + 0*2 = 0 and 0*3 + 2*3 = 6 -> mean 3
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=F64)
    assert cc_loss(s, torch.zeros_like(s)).item() == pytest.approx(3.0, rel=1e-12)
    # only |difference| counts: flipping the sign of a row's difference changes nothing
    assert cc_loss(-s, torch.zeros_like(s)).item() == pytest.approx(3.0, rel=1e-12)


def test_cc_matches_reference_and_its_gradient():
    s, t = randn(6, 5, seed=100), randn(6, 5, seed=101)
    expected = ref_cc(s.numpy(), t.numpy())
    assert cc_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert cc_loss(s.float(), t.float()).item() == pytest.approx(expected, rel=1e-5)
    # (b, c, L) embeddings are flattened
    s3, t3 = randn(4, 2, 3, seed=102), randn(4, 6, seed=103)
    assert cc_loss(s3, t3.view(4, 2, 3)).item() == pytest.approx(ref_cc(s3.numpy(), t3.numpy()), rel=1e-12)
    # gradients w.r.t. both embeddings (RepDistiller trains the teacher's embedding too); no |x| kink is hit here
    sg, tg = s.clone().requires_grad_(), t.clone().requires_grad_()
    cc_loss(sg, tg).backward()
    np.testing.assert_allclose(sg.grad.numpy(), numeric_grad(lambda x: ref_cc(x, t.numpy()), s.numpy()), rtol=1e-6)
    np.testing.assert_allclose(tg.grad.numpy(), numeric_grad(lambda x: ref_cc(s.numpy(), x), t.numpy()), rtol=1e-6)
    assert torch.autograd.gradcheck(cc_loss, (s.clone().requires_grad_(), t.clone().requires_grad_()))


def test_cc_limits():
    s, t = randn(5, 4, seed=104), randn(5, 4, seed=105)
    assert cc_loss(s, s.clone()).item() == 0.0
    assert cc_loss(s, t).item() == pytest.approx(cc_loss(t, s).item(), rel=1e-12)  # symmetric
    assert cc_loss(s * 3, t * 3).item() == pytest.approx(9 * cc_loss(s, t).item(), rel=1e-12)  # quadratic
    assert cc_loss(s + 7.0, t + 7.0).item() == pytest.approx(cc_loss(s, t).item(), rel=1e-12)  # shift-free
    # the order of the batch matters (consecutive samples are paired), unlike a correlation matrix's norm
    assert cc_loss(s[[1, 0, 2, 3, 4]], t[[1, 0, 2, 3, 4]]).item() != pytest.approx(cc_loss(s, t).item(), rel=1e-6)
    # one sample: no pair, zero and finite with a gradient (RepDistiller's empty mean would be NaN)
    one = s[:1].clone().requires_grad_()
    loss = cc_loss(one, t[:1])
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(one.grad, torch.zeros_like(one))


# ---------------------------------------------------------------------------------------------
# Correlation congruence, the paper's Taylor-expanded Gaussian-RBF correlation matrices
# ---------------------------------------------------------------------------------------------


def ref_cc_kernel(s, t, gamma: float, max_p: int) -> float:
    """Entry by entry in plain Python: k(x, y) = exp(-2g) sum_p (2g)^p / p! (x.y)^p; 1/b^2 sum (Cs - Ct)^2."""
    s, t = np.asarray(s, np.float64).reshape(len(s), -1), np.asarray(t, np.float64).reshape(len(t), -1)
    b = len(s)

    def k(x, y):
        dot = float(sum(a * c for a, c in zip(x, y)))
        return math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * dot**p for p in range(max_p + 1))

    return sum((k(s[i], s[j]) - k(t[i], t[j])) ** 2 for i in range(b) for j in range(b)) / b**2


def test_cc_kernel_by_hand():
    # b = 1, d = 1: C_s = e^{-2g}(1 + 2g s^2 + 2g^2 s^4), C_t likewise with t
    s, t, g = torch.tensor([[2.0]], dtype=F64), torch.tensor([[1.0]], dtype=F64), 0.5
    cs = math.exp(-1) * (1 + 1 * 4 + 0.5 * 16)  # (2g)^1 / 1! = 1, (2g)^2 / 2! = 0.5
    ct = math.exp(-1) * (1 + 1 + 0.5)
    assert cc_kernel_loss(s, t, gamma=g, max_p=2).item() == pytest.approx((cs - ct) ** 2, rel=1e-12)
    assert cc_kernel_loss(s, s.clone(), gamma=g, max_p=2).item() == 0.0
    # max_p = 0: the kernel is the constant exp(-2g), both matrices equal
    assert cc_kernel_loss(randn(4, 3, seed=70), randn(4, 3, seed=71), gamma=0.4, max_p=0).item() == 0.0


@pytest.mark.parametrize("gamma, max_p", [(0.4, 2), (0.1, 3), (1.0, 1)])
def test_cc_kernel_matches_reference_and_its_gradient(gamma, max_p):
    s, t = randn(5, 4, seed=72) * 0.5, randn(5, 2, 2, seed=73) * 0.5
    expected = ref_cc_kernel(s.numpy(), t.numpy(), gamma, max_p)
    assert cc_kernel_loss(s, t, gamma, max_p).item() == pytest.approx(expected, rel=1e-12)
    assert cc_kernel_loss(s.float(), t.float(), gamma, max_p).item() == pytest.approx(expected, rel=1e-4)
    # gradient: finite differences of the independent reference
    s_req = s.clone().requires_grad_()
    cc_kernel_loss(s_req, t, gamma, max_p).backward()
    h, numeric = 1e-6, np.zeros(s.shape)
    for idx in np.ndindex(*s.shape):
        up, down = s.numpy().copy(), s.numpy().copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (ref_cc_kernel(up, t.numpy(), gamma, max_p) - ref_cc_kernel(down, t.numpy(), gamma, max_p)) / (
            2 * h
        )
    assert np.allclose(s_req.grad.numpy(), numeric, rtol=1e-6, atol=1e-9)
