"""Losses against hand computations and their limiting cases."""

import math

import pytest
import torch

from kdlab.losses import kd_loss, mse_logits_loss, tf_kd_loss


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def hand_kd(student_rows, teacher_rows, T):
    """KL(q_T || p_T) * T^2 averaged over rows, written out with plain floats."""
    total = 0.0
    for s, t in zip(student_rows, teacher_rows):
        p = softmax([x / T for x in s])
        q = softmax([x / T for x in t])
        total += sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q))
    return total / len(student_rows) * T**2


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
