"""Feature-based losses (``kdlab.losses.feature``): the FitNets hint loss and attention transfer.

The attention maps and AT loss are checked against independent numpy float64 references written from the
paper's definition, never by re-running the torch calls the implementations use; alongside: hand-computed
tiny cases, limiting cases, invariances and the pooling of maps of different spatial sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.losses import at_loss, attention_map, hint_loss
from tests.reference import F64, randn

# ---------------------------------------------------------------------------------------------
# independent references (numpy float64 / python floats)
# ---------------------------------------------------------------------------------------------


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
