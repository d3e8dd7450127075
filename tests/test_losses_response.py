"""Response-based losses (``kdlab.losses.response``): KD, MSE on logits, Tf-KD, DKD and DIST.

Each is checked against hand computations and independent references written with plain Python floats /
numpy float64 loops straight from the papers' (and their reference code's) definitions, never by re-running
the torch calls the implementations use. Alongside: limiting cases, invariances, gradients and numerical
stability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses import dist_loss, dkd_loss, kd_loss, mse_logits_loss, tf_kd_loss
from tests.reference import F64, kl, np_softmax, randn, softmax, t64

# ---------------------------------------------------------------------------------------------
# independent references (numpy float64 / python floats)
# ---------------------------------------------------------------------------------------------


def hand_kd(student_rows, teacher_rows, T):
    """KL(q_T || p_T) * T^2 averaged over rows, written out with plain floats."""
    total = 0.0
    for s, t in zip(student_rows, teacher_rows):
        p = softmax([x / T for x in s])
        q = softmax([x / T for x in t])
        total += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    return total / len(student_rows) * T**2


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


# ---------------------------------------------------------------------------------------------
# KD, MSE on logits, Tf-KD
# ---------------------------------------------------------------------------------------------

S = [[2.0, 1.0, 0.1], [0.5, -1.0, 3.0]]
TT = [[1.5, 1.2, -0.3], [0.0, 0.2, 2.0]]


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_kd_loss_matches_hand_computation(T):
    got = kd_loss(torch.tensor(S, dtype=torch.float64), torch.tensor(TT, dtype=torch.float64), T)
    assert got.item() == pytest.approx(hand_kd(S, TT, T), rel=1e-9)
    got32 = kd_loss(torch.tensor(S), torch.tensor(TT), T)
    assert got32.item() == pytest.approx(hand_kd(S, TT, T), rel=1e-4)


def test_kd_loss_single_case_by_hand():
    # student uniform over 2 classes, teacher (log 3, 0) -> q = (3/4, 1/4), T = 1:
    # KL = 3/4 log(3/4 / 1/2) + 1/4 log(1/4 / 1/2) = 3/4 log 1.5 - 1/4 log 2
    got = kd_loss(torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), 1.0)
    assert got.item() == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2.0), rel=1e-6)


def test_kd_loss_zero_for_identical_logits_and_positive_otherwise():
    x = torch.randn(8, 10)
    assert kd_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(x, x + 5.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    assert kd_loss(x, torch.randn(8, 10), 4.0).item() > 0


def test_kd_loss_temperature_scaling():
    # logits scaled by T at temperature T give the T=1 distributions: the loss is T^2 times the T=1 loss
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    for T in (2.0, 4.0):
        assert kd_loss(s * T, t * T, T).item() == pytest.approx(T**2 * kd_loss(s, t, 1.0).item(), rel=1e-5)


def test_kd_loss_is_batch_mean_and_stable_under_large_logits():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    per_row = torch.stack([kd_loss(s[i : i + 1], t[i : i + 1], 3.0) for i in range(6)])
    assert kd_loss(s, t, 3.0).item() == pytest.approx(per_row.mean().item(), rel=1e-5)
    big = kd_loss(s * 1e4, t * 1e4, 1.0)
    assert torch.isfinite(big)


def test_kd_loss_gradient_flows_to_student_only_when_teacher_detached():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    kd_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # the gradient of KL*T^2 wrt student logits is T * (p_T - q_T) / batch
    T = 2.0
    expected = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1)) / 3
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_mse_logits_loss_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    # squared errors 1, 0, 4, 0 -> mean 1.25
    assert mse_logits_loss(s, t).item() == pytest.approx(1.25)
    assert mse_logits_loss(s, s.clone()).item() == 0.0


def test_tf_kd_loss_by_hand():
    # 3 classes, label 0, correct_prob 0.9 -> virtual (0.9, 0.05, 0.05); T = 0.5 -> softmax(1.8, 0.1, 0.1)
    e = [math.exp(1.8), math.exp(0.1), math.exp(0.1)]
    q = [v / sum(e) for v in e]
    p = softmax([1.0, 0.0, -1.0])
    kl = sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    got = tf_kd_loss(torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64), torch.tensor([0]), 0.9, 0.5)
    assert got.item() == pytest.approx(kl / 3, rel=1e-9)  # mean over the batch x class elements


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
