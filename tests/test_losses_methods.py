"""DKD, DIST, FitNets, AT, RKD, SP, PKT and CRD losses against independent hand computations.

Every reference below is written with plain Python floats / numpy float64 loops straight from
the papers' (and their reference code's) definitions, never by re-running the torch calls the
implementations use. Alongside: limiting cases, invariances, gradients and numerical stability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses import (
    at_loss,
    attention_map,
    crd_loss,
    dist_loss,
    dkd_loss,
    hint_loss,
    kd_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
)

F64 = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# independent references (numpy float64 / python floats)
# ---------------------------------------------------------------------------------------------


def np_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def kl(q, p) -> float:
    """KL(q || p) = sum_i q_i log(q_i / p_i), with 0 log 0 = 0."""
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)


def ref_dkd_parts(s, t, target, T) -> tuple[float, float]:
    """(TCKD, NCKD) averaged over rows and times T^2, from the probability-space definitions."""
    tckd = nckd = 0.0
    for srow, trow, g in zip(np.asarray(s), np.asarray(t), target):
        ps, pt = np_softmax(srow / T), np_softmax(trow / T)
        tckd += kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        others = [j for j in range(len(srow)) if j != g]
        # softmax over the non-target classes only = p restricted to them and renormalised
        ns = [ps[j] / sum(ps[k] for k in others) for j in others]
        nt = [pt[j] / sum(pt[k] for k in others) for j in others]
        nckd += kl(nt, ns)
    n = len(target)
    return tckd / n * T**2, nckd / n * T**2


def ref_pearson(a, b, eps: float = 1e-8) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (math.sqrt((a * a).sum()) * math.sqrt((b * b).sum()) + eps))


def ref_dist(s, t, beta, gamma, T) -> float:
    ys = np.stack([np_softmax(r / T) for r in np.asarray(s)])
    yt = np.stack([np_softmax(r / T) for r in np.asarray(t)])
    inter = 1 - np.mean([ref_pearson(ys[i], yt[i]) for i in range(ys.shape[0])])
    intra = 1 - np.mean([ref_pearson(ys[:, j], yt[:, j]) for j in range(ys.shape[1])])
    return T**2 * (beta * inter + gamma * intra)


def ref_attention(f, p: float = 2.0) -> np.ndarray:
    """(b, c, *spatial) -> (b, prod(spatial)): channel mean of |f|^p, flattened, unit L2 norm."""
    f = np.asarray(f, np.float64)
    out = []
    for sample in f:
        a = (np.abs(sample) ** p).mean(axis=0).reshape(-1)
        n = math.sqrt(float((a * a).sum()))
        out.append(a / n if n > 0 else a)
    return np.stack(out)


def ref_at(s, t, p: float = 2.0) -> float:
    a, b = ref_attention(s, p), ref_attention(t, p)
    return float(((a - b) ** 2).mean())


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
# DKD
# ---------------------------------------------------------------------------------------------

DKD_S = [[2.0, 1.0, 0.1, -0.5], [0.5, -1.0, 3.0, 0.2], [0.0, 0.3, -0.2, 1.1]]
DKD_T = [[1.5, 1.2, -0.3, 0.4], [0.0, 0.2, 2.0, -1.0], [2.2, 0.1, 0.0, -0.4]]
DKD_Y = [0, 2, 3]


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.0, 1.0), (1.0, 8.0), (0.5, 2.0)])
def test_dkd_matches_hand_computation(alpha, beta, T):
    tckd, nckd = ref_dkd_parts(DKD_S, DKD_T, DKD_Y, T)
    expected = alpha * tckd + beta * nckd
    got = dkd_loss(t64(DKD_S), t64(DKD_T), torch.tensor(DKD_Y), alpha, beta, T)
    assert got.dtype == F64
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    got32 = dkd_loss(torch.tensor(DKD_S), torch.tensor(DKD_T), torch.tensor(DKD_Y), alpha, beta, T)
    assert got32.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_dkd_tiny_case_by_hand():
    # 3 classes, target 0, T = 1. Student logits (0, 0, 0): p_s = (1/3, 1/3, 1/3), so
    # b_s = (1/3, 2/3) and the non-target distribution is n_s = (1/2, 1/2).
    # Teacher logits (log 6, 0, log 3): p_t = (6, 1, 3) / 10, so b_t = (0.6, 0.4), n_t = (1/4, 3/4).
    # TCKD = 0.6 log(0.6 / (1/3)) + 0.4 log(0.4 / (2/3)) = 0.6 log 1.8 + 0.4 log 0.6
    # NCKD = 1/4 log(1/4 / 1/2) + 3/4 log(3/4 / 1/2) = 0.75 log 1.5 - 0.25 log 2
    s = torch.zeros(1, 3, dtype=F64)
    t = torch.tensor([[math.log(6.0), 0.0, math.log(3.0)]], dtype=F64)
    y = torch.tensor([0])
    tckd = 0.6 * math.log(1.8) + 0.4 * math.log(0.6)
    nckd = 0.75 * math.log(1.5) - 0.25 * math.log(2.0)
    assert dkd_loss(s, t, y, 1.0, 0.0, 1.0).item() == pytest.approx(tckd, rel=1e-12)
    assert dkd_loss(s, t, y, 0.0, 1.0, 1.0).item() == pytest.approx(nckd, rel=1e-12)
    # and with T = 2 the logits are halved, and the result carries T^2 = 4
    t2 = t * 2
    assert dkd_loss(s, t2, y, 1.0, 1.0, 2.0).item() == pytest.approx(4 * (tckd + nckd), rel=1e-12)


def test_dkd_is_linear_in_alpha_beta():
    s, t, y = t64(DKD_S), t64(DKD_T), torch.tensor(DKD_Y)
    tckd = dkd_loss(s, t, y, 1.0, 0.0, 3.0)
    nckd = dkd_loss(s, t, y, 0.0, 1.0, 3.0)
    assert dkd_loss(s, t, y, 2.5, 7.0, 3.0).item() == pytest.approx(2.5 * tckd.item() + 7.0 * nckd.item(), rel=1e-12)
    assert dkd_loss(s, t, y, 0.0, 0.0, 3.0).item() == 0.0


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("row", [0, 1, 2])
def test_dkd_decomposes_kd(T, row):
    # DKD paper, eq. (3): KD = TCKD + (1 - p_t[target]) * NCKD, per sample (both sides carry T^2)
    s, t = t64(DKD_S)[row : row + 1], t64(DKD_T)[row : row + 1]
    y = torch.tensor(DKD_Y[row : row + 1])
    tckd = dkd_loss(s, t, y, 1.0, 0.0, T).item()
    nckd = dkd_loss(s, t, y, 0.0, 1.0, T).item()
    pt_target = np_softmax(np.asarray(DKD_T[row]) / T)[DKD_Y[row]]
    assert kd_loss(s, t, T).item() == pytest.approx(tckd + (1 - pt_target) * nckd, rel=1e-10)


def test_dkd_limiting_cases_and_shift_invariance():
    s, t = randn(6, 5, seed=1), randn(6, 5, seed=2)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert dkd_loss(s, s.clone(), y, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert dkd_loss(s, t, y, 1.0, 0.0, 4.0).item() > 0
    assert dkd_loss(s, t, y, 0.0, 1.0, 4.0).item() > 0
    # adding a constant (different for each row, on either side) to all logits of a row changes nothing
    shift_s, shift_t = randn(6, 1, seed=3) * 10, randn(6, 1, seed=4) * 10
    base = dkd_loss(s, t, y, 1.0, 8.0, 4.0).item()
    assert dkd_loss(s + shift_s, t + shift_t, y, 1.0, 8.0, 4.0).item() == pytest.approx(base, rel=1e-10)
    # not symmetric in general
    assert dkd_loss(t, s, y, 1.0, 8.0, 4.0).item() != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_dkd_large_logits_finite_values_and_gradients(scale):
    s = (randn(4, 5, seed=5, dtype=torch.float32) * scale).requires_grad_()
    t = randn(4, 5, seed=6, dtype=torch.float32) * scale
    y = torch.tensor([0, 1, 2, 3])
    loss = dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_extremely_confident_teacher_closed_form(T):
    # teacher logits (L, 0, ..., 0) with L = 1e4: p_t is one-hot on the target (to float precision),
    # so TCKD = -log p_s[target]; the teacher's non-target logits are all equal, so n_t is uniform
    # and NCKD = KL(uniform || n_s) = -log(C - 1) - mean_j log n_s[j]. Both times T^2.
    C, L = 5, 1e4
    s_rows = [[0.3, -1.0, 2.0, 0.5, -0.2], [1.0, 0.0, -0.5, 0.7, 0.1]]
    y = [0, 3]
    t_rows = [[L if j == g else 0.0 for j in range(C)] for g in y]
    tckd = nckd = 0.0
    for row, g in zip(s_rows, y):
        ps = np_softmax(np.asarray(row) / T)
        tckd += -math.log(ps[g])
        others = [ps[j] for j in range(C) if j != g]
        ns = [v / sum(others) for v in others]
        nckd += -math.log(C - 1) - sum(math.log(v) for v in ns) / (C - 1)
    tckd, nckd = tckd / 2 * T**2, nckd / 2 * T**2
    for dtype, rel in ((F64, 1e-10), (torch.float32, 1e-4)):
        s = torch.tensor(s_rows, dtype=dtype, requires_grad=True)
        t = torch.tensor(t_rows, dtype=dtype)
        loss = dkd_loss(s, t, torch.tensor(y), 1.0, 8.0, T)
        assert loss.item() == pytest.approx(tckd + 8.0 * nckd, rel=rel)
        loss.backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # and an extremely confident teacher with an extremely wrong student stays finite
    s = torch.tensor([[-L, 0.0, 0.0], [0.0, L, 0.0]], requires_grad=True)
    t = torch.tensor([[L, 0.0, 0.0], [L, 0.0, -L]])
    loss = dkd_loss(s, t, torch.tensor([0, 0]), 1.0, 8.0, T)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------------------------
# DIST
# ---------------------------------------------------------------------------------------------

DIST_S = [[2.0, 1.0, 0.1, -0.5], [0.5, -1.0, 3.0, 0.2], [0.0, 0.3, -0.2, 1.1]]
DIST_T = [[1.5, 1.2, -0.3, 0.4], [0.0, 0.2, 2.0, -1.0], [2.2, 0.1, 0.0, -0.4]]


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("beta,gamma", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 0.5)])
def test_dist_matches_hand_computation(beta, gamma, T):
    expected = ref_dist(DIST_S, DIST_T, beta, gamma, T)
    got = dist_loss(t64(DIST_S), t64(DIST_T), beta, gamma, T)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    got32 = dist_loss(torch.tensor(DIST_S), torch.tensor(DIST_T), beta, gamma, T)
    assert got32.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_dist_tiny_case_by_hand():
    # 2 classes: a softmax row is (p, 1 - p); centred it is (p - 1/2, 1/2 - p), so the row correlation
    # is sign((p_s - 1/2)(p_t - 1/2)) = +-1. Student [[1, 0], [0, 1]], teacher [[0, 2], [0, 1]]:
    #   row 0: p_s > 1/2, p_t < 1/2 -> -1;  row 1: both < 1/2 -> +1;  inter = 1 - 0 = 1.
    #   column 0: student (s(1), s(-1)) decreases, teacher (s(-2), s(-1)) increases -> -1; column 1
    #   is 1 - column 0 for both, so also -1;  intra = 1 - (-1) = 2.
    # loss = T^2 (beta * 1 + gamma * 2), up to the eps = 1e-8 in the correlation's denominator.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    t = torch.tensor([[0.0, 2.0], [0.0, 1.0]], dtype=F64)
    assert dist_loss(s, t, 1.0, 0.0, 1.0).item() == pytest.approx(1.0, abs=1e-6)
    assert dist_loss(s, t, 0.0, 1.0, 1.0).item() == pytest.approx(2.0, abs=1e-6)
    assert dist_loss(s, t, 1.0, 2.0, 1.0).item() == pytest.approx(5.0, abs=1e-6)
    assert dist_loss(s * 3, t * 3, 1.0, 1.0, 3.0).item() == pytest.approx(9 * 3.0, abs=1e-5)


def test_dist_limiting_cases_invariances_and_symmetry():
    s, t = randn(6, 5, seed=7), randn(6, 5, seed=8)
    # identical inputs: each correlation is |a|^2 / (|a|^2 + 1e-8), so the loss is ~0 but not exactly 0;
    # at T = 4 the centred softmax vectors are small and T^2 = 16 multiplies the residue (~5e-5 here)
    assert dist_loss(s, s.clone(), 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    same4 = dist_loss(s, s.clone(), 1.0, 1.0, 4.0).item()
    assert 0 < same4 < 1e-3
    assert same4 == pytest.approx(ref_dist(s.numpy(), s.numpy(), 1.0, 1.0, 4.0), rel=1e-6)
    base = dist_loss(s, t, 1.0, 1.0, 4.0).item()
    assert base > 0
    # a per-row constant added to the logits (either side) leaves the softmax, hence the loss, unchanged
    shifted = dist_loss(s + randn(6, 1, seed=9) * 10, t - randn(6, 1, seed=10) * 10, 1.0, 1.0, 4.0)
    assert shifted.item() == pytest.approx(base, rel=1e-9)
    # Pearson correlation is symmetric, so is the loss
    assert dist_loss(t, s, 1.0, 1.0, 4.0).item() == pytest.approx(base, rel=1e-12)


@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_dist_large_logits_finite_values_and_gradients(scale):
    s = (randn(4, 5, seed=11, dtype=torch.float32) * scale).requires_grad_()
    t = randn(4, 5, seed=12, dtype=torch.float32) * scale
    loss = dist_loss(s, t, 1.0, 2.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all()
    # at this scale the softmax saturates to (nearly) one-hot, so the gradient may vanish; it must
    # not be NaN. A moderate scale (logits ~20) still saturates strongly but has a non-zero gradient.
    s2 = (randn(4, 5, seed=11, dtype=torch.float32) * 20).requires_grad_()
    dist_loss(s2, t / scale * 20, 1.0, 2.0, 4.0).backward()
    assert torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# FitNets hint loss
# ---------------------------------------------------------------------------------------------


def test_hint_loss_by_hand_and_limits():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    t = torch.tensor([[[0.0, 2.0], [5.0, 0.0]]])
    # squared errors 1, 0, 4, 16 -> mean 21 / 4
    assert hint_loss(s, t).item() == pytest.approx(5.25)
    a, b = randn(2, 3, 4, seed=13), randn(2, 3, 4, seed=14)
    expected = float(((a.numpy() - b.numpy()) ** 2).mean())
    assert hint_loss(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert hint_loss(a, a.clone()).item() == 0.0
    assert hint_loss(a, b).item() == pytest.approx(hint_loss(b, a).item(), rel=1e-12)
    zero = hint_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    assert zero.item() == 0.0


# ---------------------------------------------------------------------------------------------
# Attention transfer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape_s,shape_t", [((3, 4, 6), (3, 2, 6)), ((2, 3, 3, 4), (2, 5, 3, 4))])
@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_at_matches_hand_computation(shape_s, shape_t, p):
    s, t = randn(*shape_s, seed=15), randn(*shape_t, seed=16)
    np.testing.assert_allclose(attention_map(s, p).numpy(), ref_attention(s.numpy(), p), rtol=1e-12)
    assert at_loss(s, t, p).item() == pytest.approx(ref_at(s.numpy(), t.numpy(), p), rel=1e-10)


def test_at_tiny_case_by_hand():
    # one sample, one channel, 2 positions. Student f = (1, 1) -> map (1, 1)/sqrt 2;
    # teacher f = (2, 0) -> |f|^2 = (4, 0) -> map (1, 0).
    # squared differences: (1/sqrt 2 - 1)^2 + 1/2 = 2 - sqrt 2; mean over 2 positions = 1 - 1/sqrt 2
    s = torch.tensor([[[1.0, 1.0]]], dtype=F64)
    t = torch.tensor([[[2.0, 0.0]]], dtype=F64)
    assert at_loss(s, t).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-12)
    # the sign of a feature does not matter (|f|^p): (-1, 1) gives the same map as (1, 1)
    assert at_loss(torch.tensor([[[-1.0, 1.0]]], dtype=F64), t).item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_at_limits_invariance_symmetry():
    s, t = randn(3, 4, 5, 5, seed=17), randn(3, 2, 5, 5, seed=18)
    base = at_loss(s, t).item()
    assert base > 0
    assert at_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-15)
    # positive scaling of either map (per sample even) only rescales |f|^p, undone by the L2 norm
    scale = torch.tensor([0.1, 3.0, 70.0], dtype=F64).view(3, 1, 1, 1)
    assert at_loss(s * scale, t * 5.0).item() == pytest.approx(base, rel=1e-10)
    # symmetric, also across different spatial sizes
    assert at_loss(t, s).item() == pytest.approx(base, rel=1e-12)
    big = randn(3, 2, 10, 10, seed=19)
    assert at_loss(big, s).item() == pytest.approx(at_loss(s, big).item(), rel=1e-12)
    # zero maps stay finite (0 / max(norm, eps) = 0)
    zs = torch.zeros(3, 4, 5, 5)
    assert at_loss(zs, zs).item() == 0.0
    zero_vs_t = at_loss(zs, t.float())
    assert torch.isfinite(zero_vs_t)
    # map of zero = 0, teacher's map has unit norm per sample -> mean of squares = 1 / 25 positions
    assert zero_vs_t.item() == pytest.approx(1 / 25, rel=1e-5)


def test_at_different_sizes_1d_equals_manual_pooling():
    s, t = randn(2, 3, 8, seed=20), randn(2, 5, 4, seed=21)
    pooled = s.reshape(2, 3, 4, 2).mean(-1)  # average over pairs of positions
    assert at_loss(s, t).item() == pytest.approx(at_loss(pooled, t).item(), rel=1e-12)
    assert at_loss(s, t).item() == pytest.approx(ref_at(pooled.numpy(), t.numpy()), rel=1e-10)
    # the teacher is pooled when it is the larger one
    assert at_loss(t, s).item() == pytest.approx(ref_at(t.numpy(), pooled.numpy()), rel=1e-10)


def test_at_different_sizes_2d_equals_manual_pooling():
    s, t = randn(2, 3, 8, 8, seed=22), randn(2, 4, 4, 4, seed=23)
    pooled = s.reshape(2, 3, 4, 2, 4, 2).mean((3, 5))  # 2x2 blocks
    assert at_loss(s, t).item() == pytest.approx(at_loss(pooled, t).item(), rel=1e-12)
    assert at_loss(s, t).item() == pytest.approx(ref_at(pooled.numpy(), t.numpy()), rel=1e-10)
    assert at_loss(t, s).item() == pytest.approx(ref_at(t.numpy(), pooled.numpy()), rel=1e-10)


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
    ref = ref_rkd(s.detach().double().numpy(), t.detach().double().numpy(), 25.0, 50.0)
    assert loss.item() == pytest.approx(ref, rel=1e-4)


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
# gradients flow into the student
# ---------------------------------------------------------------------------------------------

GRAD_CASES = {
    "dkd": (lambda s, t: dkd_loss(s, t, torch.tensor([0, 1, 2, 3]), 1.0, 8.0, 4.0), (4, 5), (4, 5)),
    "dist": (lambda s, t: dist_loss(s, t, 1.0, 2.0, 4.0), (4, 5), (4, 5)),
    "hint": (hint_loss, (2, 3, 4), (2, 3, 4)),
    "at_1d": (at_loss, (2, 3, 8), (2, 4, 4)),
    "at_2d": (at_loss, (2, 3, 4, 4), (2, 5, 4, 4)),
    "rkd": (lambda s, t: rkd_loss(s, t, 25.0, 50.0), (5, 4), (5, 6)),
    "sp": (sp_loss, (4, 3, 2, 2), (4, 6)),
    "pkt": (pkt_loss, (5, 4), (5, 3)),
    "crd": (lambda s, t: crd_loss(s.abs() + 0.01, t.abs() + 0.01, 100), (3, 5), (3, 5)),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradient_reaches_student(name):
    fn, shape_s, shape_t = GRAD_CASES[name]
    s = randn(*shape_s, seed=44, dtype=torch.float32).requires_grad_()
    t = randn(*shape_t, seed=45, dtype=torch.float32)
    loss = fn(s, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["hint", "at_1d", "at_2d", "sp", "pkt"])
def test_zero_student_features_finite_value_and_gradient(name):
    fn, shape_s, shape_t = GRAD_CASES[name]
    s = torch.zeros(*shape_s, requires_grad=True)
    t = randn(*shape_t, seed=46, dtype=torch.float32)
    loss = fn(s, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(fn(torch.zeros(*shape_s), torch.zeros(*shape_t)))
