"""Connector losses (``kdlab.losses.connector``): AB, FT, OFD (and its margins) and ReviewKD's HCL.

Values and gradients are checked against the independent numpy float64 references of
``tests/reference_connector.py`` (gradients against their central finite differences), on hand-computed
tiny cases and seeded random 1-D and 2-D maps, in float64 and in float32 (float32 tolerances); plus
limiting cases, the per-stage weights and one-line errors on bad shapes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.losses.connector import (
    ab_loss,
    ab_stage_loss,
    ft_factor,
    ft_loss,
    hcl_loss,
    ofd_loss,
    ofd_margin,
    ofd_stage_loss,
)
from tests import reference_connector as ref
from tests.reference import F64, randn


def grad_of(fn, x: torch.Tensor) -> np.ndarray:
    x = x.detach().clone().requires_grad_(True)
    fn(x).backward()
    return x.grad.numpy()


def check_grad(torch_fn, ref_fn, x: torch.Tensor) -> None:
    expected = ref.fd_grad(ref_fn, x)
    np.testing.assert_allclose(grad_of(torch_fn, x), expected, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# AB
# ---------------------------------------------------------------------------------------------


def test_ab_stage_by_hand_and_limits():
    s = torch.tensor([[[-2.0, -0.5, 0.5, 2.0]]])
    t = torch.tensor([[[-1.0, -1.0, 1.0, 1.0]]])
    # inactive teacher: -2 is past -1 (0), -0.5 is not ((−0.5 + 1)^2); active: 0.5 not past 1 ((0.5 − 1)^2), 2 is (0)
    assert ab_stage_loss(s, t).item() == pytest.approx(0.5)
    assert ab_loss([s], [t]).item() == pytest.approx(0.5 / 1 / 1000 * 3)
    assert ab_stage_loss(s, t, margin=3.0).item() == pytest.approx(1 + 2.5**2 + 2.5**2 + 1)
    t0 = randn(2, 3, 5, seed=1)
    beyond = 2.0 * torch.where(t0 > 0, 1.0, -1.0)  # on the teacher's side of each boundary, past the margin
    assert ab_stage_loss(beyond, t0).item() == 0.0
    assert ab_stage_loss(beyond, -t0).item() > 0.0
    assert ab_stage_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)).item() == pytest.approx(2 * 3 * 4)  # (0 + 1)^2


@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 3, 4, 4)])
@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_reference(shape, margin):
    s = [randn(*shape, seed=10 + i) for i in range(3)]
    t = [randn(*shape, seed=20 + i) for i in range(3)]
    expected = ref.ab(s, t, margin)
    assert ab_loss(s, t, margin).item() == pytest.approx(expected, rel=1e-12)
    assert ab_loss([x.float() for x in s], [x.float() for x in t], margin).item() == pytest.approx(expected, rel=1e-5)
    # the gradient through the deepest stage, others fixed
    check_grad(lambda x: ab_loss([*s[:2], x], t, margin), lambda x: ref.ab([*s[:2], x], t, margin), s[2])


def test_ab_weighs_deeper_stages_more():
    s, t = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2)
    one = ab_loss([s], [t]).item()
    assert ab_loss([s, s, s], [t, t, t]).item() == pytest.approx(one * (1 / 4 + 1 / 2 + 1), rel=1e-12)
    assert ab_loss([s, s], [t, t]).item() == pytest.approx(one * 1.5, rel=1e-12)
    big = ab_loss([s.repeat(2, 1, 1)], [t.repeat(2, 1, 1)]).item()  # divided by the batch size
    assert big == pytest.approx(one, rel=1e-12)


def test_ab_refuses_unpaired_inputs():
    with pytest.raises(KdlabError, match=r"AB compares maps of one shape; got \(2, 3, 4\) and \(2, 5, 4\)"):
        ab_stage_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))
    with pytest.raises(KdlabError, match="AB pairs stages: got 2 student and 1 teacher"):
        ab_loss([torch.zeros(1, 1, 1)] * 2, [torch.zeros(1, 1, 1)])


# ---------------------------------------------------------------------------------------------
# FT
# ---------------------------------------------------------------------------------------------


def test_ft_factor_by_hand():
    f = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])  # (1, 2, 2): channel mean of squares (5, 2)
    np.testing.assert_allclose(ft_factor(f).numpy(), [[5 / math.sqrt(29), 2 / math.sqrt(29)]], rtol=1e-6)
    g = randn(3, 4, 5, 5, seed=3)
    np.testing.assert_allclose(ft_factor(g).numpy(), ref.ft_factor(g), rtol=1e-12)
    assert ft_factor(torch.zeros(2, 3, 4)).abs().sum().item() == 0.0  # a zero factor stays zero


@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [((3, 4, 6), (3, 2, 6)), ((3, 4, 10), (3, 5, 5)), ((3, 4, 5), (3, 2, 10)), ((2, 3, 4, 4), (2, 5, 2, 2))],
)
def test_ft_loss_matches_reference(s_shape, t_shape):
    s, t = randn(*s_shape, seed=5), randn(*t_shape, seed=6)
    expected = ref.ft(s, t)
    assert ft_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert ft_loss(s.float(), t.float()).item() == pytest.approx(expected, rel=1e-5)
    check_grad(lambda x: ft_loss(x, t), lambda x: ref.ft(x, t), s)


def test_ft_loss_limits():
    s, t = randn(2, 3, 6, seed=7), randn(2, 4, 6, seed=8)
    assert ft_loss(s, s.clone()).item() == 0.0
    assert ft_loss(3.0 * s, t).item() == pytest.approx(ft_loss(s, t).item(), rel=1e-12)  # factors are normalised
    assert ft_loss(s, t).item() == pytest.approx(ft_loss(t, s).item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# OFD
# ---------------------------------------------------------------------------------------------


def test_ofd_margin_by_hand_and_against_reference():
    # N(0, 1): E[x | x < 0] = -phi(0) / 0.5
    assert ofd_margin(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(-2 / math.sqrt(2 * math.pi))
    # mean 5 std 1: P(x < 0) ~ 3e-7 <= 0.001, so -3 std; the sign of the BN weight does not matter
    assert ofd_margin(torch.tensor([-1.0]), torch.tensor([5.0])).item() == pytest.approx(-3.0)
    std, mean = randn(16, seed=9), 2 * randn(16, seed=10)
    np.testing.assert_allclose(ofd_margin(std, mean).numpy(), ref.ofd_margin(std, mean), rtol=1e-10)
    np.testing.assert_allclose(ofd_margin(std.float(), mean.float()).numpy(), ref.ofd_margin(std, mean), rtol=1e-5)
    assert (ofd_margin(std, mean) < 0).all()
    # a zero std: the mean when negative, else 0
    assert ofd_margin(torch.zeros(2), torch.tensor([-0.5, 0.5])).tolist() == [-0.5, 0.0]


def test_ofd_stage_by_hand():
    t = torch.tensor([[[2.0, -0.5, -0.5, -3.0, -3.0, 0.0, -1.0]]])
    s = torch.tensor([[[1.0, 0.0, -1.0, 0.0, -2.0, 0.5, 0.0]]])
    # t > 0: (1-2)^2; m < t <= 0: s above t (0.5^2), s below t (0); t <= m: s above m ((0+1)^2), below (0);
    # the boundaries: t = 0 counts as negative ((0.5 - 0)^2), t = m as at or below the margin ((0 + 1)^2)
    m = torch.tensor([-1.0])
    assert ofd_stage_loss(s, t, m).item() == pytest.approx(1 + 0.25 + 1 + 0.25 + 1)
    assert ofd_stage_loss(s.repeat(4, 1, 1), t.repeat(4, 1, 1), m).item() == pytest.approx(3.5)  # a batch mean
    assert ref.ofd_stage(s, t, m) == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("s_shape", "t_shape"), [((3, 4, 6), (3, 4, 6)), ((3, 4, 5), (3, 4, 10)), ((2, 3, 4, 4), (2, 3, 8, 8))]
)
def test_ofd_loss_matches_reference(s_shape, t_shape):
    s = [randn(*s_shape, seed=11 + i) for i in range(2)]
    t = [randn(*t_shape, seed=21 + i) for i in range(2)]
    margins = [-0.5 * randn(t_shape[1], seed=31 + i).abs() for i in range(2)]
    expected = ref.ofd(s, t, margins)
    assert ofd_loss(s, t, margins).item() == pytest.approx(expected, rel=1e-12)
    got32 = ofd_loss([x.float() for x in s], [x.float() for x in t], [m.float() for m in margins]).item()
    assert got32 == pytest.approx(expected, rel=1e-5)
    check_grad(lambda x: ofd_loss([s[0], x], t, margins), lambda x: ref.ofd([s[0], x], t, margins), s[1])
    check_grad(lambda x: ofd_loss([x, s[1]], t, margins), lambda x: ref.ofd([x, s[1]], t, margins), s[0])


def test_ofd_loss_limits_and_weights():
    t = randn(2, 3, 6, seed=40)
    m = torch.full((3,), -0.7, dtype=F64)
    assert ofd_loss([t.clone()], [t], [m]).item() == 0.0  # the teacher itself
    below = torch.where(t > 0, t, torch.minimum(t, m.view(1, -1, 1)) - 1.0)  # negatives pushed lower: no loss
    assert ofd_loss([below], [t], [m]).item() == 0.0
    s = randn(2, 3, 6, seed=41)
    one = ofd_loss([s], [t], [m]).item()
    assert ofd_loss([s, s, s], [t, t, t], [m, m, m]).item() == pytest.approx(one * (1 / 4 + 1 / 2 + 1), rel=1e-12)


def test_ofd_refuses_bad_margins_and_pairs():
    with pytest.raises(KdlabError, match=r"OFD needs one margin per channel \(3\); got \(4,\)"):
        ofd_stage_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(4))
    with pytest.raises(KdlabError, match="OFD pairs stages: got 1 student maps, 1 teacher maps and 2 margins"):
        ofd_loss([torch.zeros(1, 3, 2)], [torch.zeros(1, 3, 2)], [torch.zeros(3)] * 2)


# ---------------------------------------------------------------------------------------------
# ReviewKD's hierarchical context loss
# ---------------------------------------------------------------------------------------------


def test_hcl_by_hand():
    s, t = torch.tensor([[[1.0, 3.0]]]), torch.zeros(1, 1, 2)
    # length 2: levels 4 and 2 skipped, level 1 kept: (mse 5 + 1/2 * pooled (2 - 0)^2) / (1 + 1/2)
    assert hcl_loss([s], [t]).item() == pytest.approx((5 + 0.5 * 4) / 1.5)
    one = torch.tensor([[[2.0]]])
    assert hcl_loss([one], [torch.zeros(1, 1, 1)]).item() == pytest.approx(4.0)  # 1 x 1: the MSE alone


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 3, 3), (2, 3, 1, 1), (2, 3, 5), (2, 3, 16)])
def test_hcl_matches_reference(shape):
    s = [randn(*shape, seed=50), randn(2, 4, *shape[2:], seed=51)]
    t = [randn(*shape, seed=52), randn(2, 4, *shape[2:], seed=53)]
    expected = ref.hcl(s, t)
    assert hcl_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert hcl_loss([x.float() for x in s], [x.float() for x in t]).item() == pytest.approx(expected, rel=1e-5)
    check_grad(lambda x: hcl_loss([x, s[1]], t), lambda x: ref.hcl([x, s[1]], t), s[0])


def test_hcl_limits_and_errors():
    s = randn(2, 3, 8, seed=60)
    assert hcl_loss([s], [s.clone()]).item() == 0.0
    shift = hcl_loss([s + 1.0], [s]).item()  # a constant offset shows at every level: (1 + 1/2 + 1/4 + 1/8) / 1.875
    assert shift == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(KdlabError, match=r"ReviewKD's HCL compares maps of one shape; got \(2, 3, 8\) and \(2, 3, 4\)"):
        hcl_loss([s], [s[..., :4]])
