"""Logit standardization (Sun et al., CVPR 2024): ``standardize_logits`` and the ``standardize``
option of the KD, DKD and DIST terms, against independent float64 references written from the
authors' code (logit-standardization-KD: ``normalize`` = (z - mean) / (1e-7 + unbiased std),
then KD / DKD on the standardized logits), value and gradient; its defining invariance; the
one-line refusal on a term that cannot take it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.config import compose, validate
from kdlab.errors import KdlabError
from kdlab.losses import standardize_logits
from kdlab.methods import DIST, DKD, KD
from kdlab.methods.base import StepOutputs
from tests.reference import F64, kl, np_softmax, numeric_grad, randn


def ref_standardize(z) -> np.ndarray:
    """Row-wise (z - mean) / (1e-7 + std with n - 1), plain numpy float64."""
    z = np.asarray(z, np.float64)
    mean = z.mean(-1, keepdims=True)
    std = np.sqrt(((z - mean) ** 2).sum(-1, keepdims=True) / (z.shape[-1] - 1))
    return (z - mean) / (1e-7 + std)


def ref_kd_ls(s, t, T) -> float:
    """The authors' KD with logit_stand: KL(softmax(std(t)/T) || softmax(std(s)/T)) summed over
    classes, averaged over rows, times T^2."""
    s, t = ref_standardize(s), ref_standardize(t)
    return float(np.mean([kl(np_softmax(tr / T), np_softmax(sr / T)) for sr, tr in zip(s, t)]) * T**2)


def ref_dkd_ls(s, t, target, alpha, beta, T) -> float:
    """The authors' dkd_loss with logit_stand, written in probability space as their code does:
    TCKD on (p_gt, 1 - p_gt); NCKD on the softmax with the target's logit lowered by 1000 / T."""
    s, t = ref_standardize(s), ref_standardize(t)
    tckd = nckd = 0.0
    for sr, tr, g in zip(s, t, target):
        ps, pt = np_softmax(sr / T), np_softmax(tr / T)
        tckd += kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        mask = np.zeros_like(sr)
        mask[g] = 1000.0
        nckd += kl(np_softmax(tr / T - mask), np_softmax(sr / T - mask))
    n = len(target)
    return (alpha * tckd + beta * nckd) / n * T**2


def test_standardize_by_hand():
    """[1, 2, 3, 6]: mean 3, unbiased std sqrt(14 / 3); the eps sits outside the square root."""
    z = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=F64)
    std = math.sqrt(14 / 3)
    expected = [(v - 3) / (1e-7 + std) for v in (1, 2, 3, 6)]
    assert standardize_logits(z)[0].tolist() == pytest.approx(expected, rel=1e-12)
    constant = standardize_logits(torch.full((1, 5), 7.0, dtype=F64))  # std 0: eps keeps it finite
    assert torch.equal(constant, torch.zeros(1, 5, dtype=F64))


def test_standardize_matches_the_reference_and_its_gradient():
    z = randn(6, 10, seed=1) * 3 + 1
    np.testing.assert_allclose(standardize_logits(z).numpy(), ref_standardize(z.numpy()), rtol=1e-12, atol=1e-12)
    w = randn(6, 10, seed=2)
    z.requires_grad_(True)
    (standardize_logits(z) * w).sum().backward()
    numeric = numeric_grad(lambda a: float((ref_standardize(a) * w.numpy()).sum()), z.detach().numpy())
    np.testing.assert_allclose(z.grad.numpy(), numeric, rtol=1e-5, atol=1e-7)


def out_of(s, t, target=None) -> StepOutputs:
    target = torch.zeros(len(s), dtype=torch.long) if target is None else target
    return StepOutputs(s, target, teacher_logits=t)


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0])
def test_kd_ls_equals_the_authors_formula_value_and_gradient(T):
    s, t = randn(8, 10, seed=3) * 4, randn(8, 10, seed=4) * 6
    term = KD(weight=1.0, temperature=T, standardize=True)
    s.requires_grad_(True)
    value = term.loss(out_of(s, t))
    assert value.item() == pytest.approx(ref_kd_ls(s.detach().numpy(), t.numpy(), T), rel=1e-10)
    value.backward()
    numeric = numeric_grad(lambda a: ref_kd_ls(a, t.numpy(), T), s.detach().numpy())
    np.testing.assert_allclose(s.grad.numpy(), numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("alpha, beta, T", [(1.0, 8.0, 4.0), (9.0, 81.0, 2.0)])
def test_dkd_ls_equals_the_authors_formula_value_and_gradient(alpha, beta, T):
    s, t = randn(8, 10, seed=5) * 3, randn(8, 10, seed=6) * 5
    target = torch.arange(8) % 10
    term = DKD(weight=1.0, alpha=alpha, beta=beta, temperature=T, warmup_epochs=0, standardize=True)
    s.requires_grad_(True)
    value = term.loss(out_of(s, t, target))
    ref = ref_dkd_ls(s.detach().numpy(), t.numpy(), target.tolist(), alpha, beta, T)
    assert value.item() == pytest.approx(ref, rel=1e-9)
    value.backward()
    numeric = numeric_grad(lambda a: ref_dkd_ls(a, t.numpy(), target.tolist(), alpha, beta, T), s.detach().numpy())
    np.testing.assert_allclose(s.grad.numpy(), numeric, rtol=1e-5, atol=1e-8)


def test_dist_ls_is_dist_on_standardized_logits():
    from kdlab.losses import dist_loss

    s, t = randn(8, 10, seed=7) * 3, randn(8, 10, seed=8) * 5
    got = DIST(beta=2.0, gamma=2.0, temperature=4.0, standardize=True).loss(out_of(s, t))
    expected = dist_loss(torch.as_tensor(ref_standardize(s)), torch.as_tensor(ref_standardize(t)), 2.0, 2.0, 4.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


def test_standardized_kd_ignores_the_scale_and_shift_of_either_logits():
    """The point of the paper: the student need not match the teacher's logit range. With LS the
    loss is the same for a * z + b (a > 0, per row), without it it is not."""
    s, t = randn(4, 10, seed=9), randn(4, 10, seed=10)
    a, b = torch.tensor([[0.5], [2.0], [7.0], [1.3]], dtype=F64), randn(4, 1, seed=11) * 10
    for standardize in (True, False):
        term = KD(temperature=2.0, standardize=standardize)
        base, moved = term.loss(out_of(s, t)).item(), term.loss(out_of(a * s + b, t)).item()
        if standardize:
            assert moved == pytest.approx(base, rel=1e-6)
        else:
            assert abs(moved - base) > 1e-3
    assert KD().standardize is False and "standardize=True" in repr(KD(standardize=True))


def test_a_term_that_cannot_take_standardize_is_refused_in_one_line():
    cfg, _ = compose(["method=at", "+method.terms.at.standardize=true"])
    cfg.paths.output_dir = "x"
    with pytest.raises(KdlabError) as e:
        validate(cfg)
    message = str(e.value)
    assert "\n" not in message and message.startswith("method.terms.at.standardize: AT takes no argument")
    assert (
        "standardize is an option of the logit terms kd (kdlab.methods.KD), dkd (DKD), dist (DIST) and mlkd" in message
    )


@pytest.mark.parametrize("method", ["kd", "dkd", "dist"])
def test_ls_is_one_override_on_every_logit_method(train, method):
    r = train([f"method={method}", f"method.terms.{method}.standardize=true", "measure_speed=false"])
    assert r["student"]["test_acc"] > 0
