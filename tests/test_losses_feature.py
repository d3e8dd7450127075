"""Feature-based losses (``kdlab.losses.feature``): the FitNets hint loss, attention transfer, and VID, FSP
and NST (RepDistiller's ``VIDLoss``, ``FSP``, ``NSTLoss``).

The attention maps and AT loss are checked against independent numpy float64 references written from the
paper's definition, never by re-running the torch calls the implementations use; alongside: hand-computed
tiny cases, limiting cases, invariances and the pooling of maps of different spatial sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.losses import at_loss, attention_map, hint_loss
from kdlab.losses.feature import fsp_loss, fsp_matrix, match_spatial, nst_loss, vid_log_scale, vid_loss
from tests.reference import F64, np_adaptive_avg_pool, np_match_spatial, numeric_grad, randn

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


# ---------------------------------------------------------------------------------------------
# shared size matching (RepDistiller pools the larger map of a pair to the smaller's size)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape_a,shape_b",
    [((2, 3, 19), (2, 4, 10)), ((2, 3, 10), (2, 4, 19)), ((2, 3, 8, 8), (2, 2, 4, 4)), ((1, 2, 7, 7), (1, 2, 3, 3))],
)
def test_match_spatial_pools_the_larger_map_like_numpy(shape_a, shape_b):
    # 19 -> 10 and 7 -> 3 are not divisible: adaptive pooling's overlapping windows
    a, b = randn(*shape_a, seed=50), randn(*shape_b, seed=51)
    pa, pb = match_spatial(a, b)
    ra, rb = np_match_spatial(a.numpy(), b.numpy())
    np.testing.assert_allclose(pa.numpy(), ra, rtol=1e-12)
    np.testing.assert_allclose(pb.numpy(), rb, rtol=1e-12)
    assert pa.shape[2:] == pb.shape[2:]


def test_adaptive_pool_reference_by_hand():
    # 5 -> 2: windows [0, 3) and [2, 5) overlap at cell 2
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    np.testing.assert_allclose(np_adaptive_avg_pool(x, (2,)), [[[2.0, 4.0]]])


# ---------------------------------------------------------------------------------------------
# VID
# ---------------------------------------------------------------------------------------------


def ref_vid(mu, t, alpha, eps: float = 1e-5) -> float:
    """mean over (b, c, *spatial) of 0.5 ((mu - t)^2 / var_c + log var_c), var_c = log(1 + exp(alpha_c)) + eps."""
    mu, t = np.asarray(mu, np.float64), np.asarray(t, np.float64)
    total, n = 0.0, 0
    for idx in np.ndindex(*t.shape):
        var = math.log(1.0 + math.exp(float(alpha[idx[1]]))) + eps
        total += 0.5 * ((mu[idx] - t[idx]) ** 2 / var + math.log(var))
        n += 1
    return total / n


def test_vid_initial_variance_and_tiny_case_by_hand():
    alpha = vid_log_scale(5.0, 1e-5)
    assert math.log1p(math.exp(alpha)) + 1e-5 == pytest.approx(5.0, rel=1e-12)
    # one sample, one channel, two positions: mu = (1, 3), t = (0, 0), var = 5
    # 0.5 * mean((1/5 + log 5), (9/5 + log 5)) = 0.5 * (1 + log 5)
    mu = torch.tensor([[[1.0, 3.0]]], dtype=F64)
    log_scale = torch.tensor([alpha], dtype=F64)
    assert vid_loss(mu, torch.zeros_like(mu), log_scale).item() == pytest.approx(0.5 * (1 + math.log(5)), rel=1e-12)
    # a perfect mean leaves the variance's log: 0.5 log 5
    assert vid_loss(mu, mu.clone(), log_scale).item() == pytest.approx(0.5 * math.log(5.0), rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 7), (2, 3, 4, 5)])
def test_vid_matches_reference_and_its_gradient(shape):
    mu, t = randn(*shape, seed=52), randn(*shape, seed=53)
    alpha = randn(shape[1], seed=54) * 2
    expected = ref_vid(mu.numpy(), t.numpy(), alpha.numpy())
    assert vid_loss(mu, t, alpha).item() == pytest.approx(expected, rel=1e-12)
    assert vid_loss(mu.float(), t.float(), alpha.float()).item() == pytest.approx(expected, rel=1e-5)
    # gradients w.r.t. the predicted mean and the variance parameters, against finite differences of the reference
    mu.requires_grad_(), alpha.requires_grad_()
    vid_loss(mu, t, alpha).backward()
    g_mu = numeric_grad(lambda m: ref_vid(m, t.numpy(), alpha.detach().numpy()), mu.detach().numpy())
    g_alpha = numeric_grad(lambda a: ref_vid(mu.detach().numpy(), t.numpy(), a), alpha.detach().numpy())
    np.testing.assert_allclose(mu.grad.numpy(), g_mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(alpha.grad.numpy(), g_alpha, rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(
        lambda m, a: vid_loss(m, t, a), (mu.detach().requires_grad_(), alpha.detach().requires_grad_())
    )


def test_vid_limits():
    t = randn(4, 3, 6, seed=55)
    alpha = torch.full((3,), vid_log_scale(5.0), dtype=F64)
    # the loss is smallest at mu = t and grows with the error; for a fixed error the best variance is the
    # mean squared error per channel (d/dvar of 0.5 (e^2 / var + log var) = 0 at var = e^2)
    losses = [vid_loss(t + d, t, alpha).item() for d in (0.0, 0.5, 1.0, 3.0)]
    assert all(a < b for a, b in zip(losses, losses[1:]))
    err = torch.full_like(t, 2.0)
    best = torch.full((3,), vid_log_scale(4.0, 1e-5), dtype=F64)
    at_best = vid_loss(t + err, t, best).item()
    assert at_best == pytest.approx(0.5 * (1 + math.log(4.0)), rel=1e-9)
    for v in (1.0, 3.0, 6.0, 20.0):
        assert vid_loss(t + err, t, torch.full((3,), vid_log_scale(v), dtype=F64)).item() > at_best
    # a huge variance parameter stays finite (softplus is linear there)
    assert torch.isfinite(vid_loss(t, t, torch.full((3,), 1e4, dtype=F64)))


# ---------------------------------------------------------------------------------------------
# FSP
# ---------------------------------------------------------------------------------------------


def ref_fsp_matrix(bottom, top) -> np.ndarray:
    """G[n, i, j] = mean over positions of bottom[n, i] * top[n, j], after pooling the larger map."""
    bottom, top = np_match_spatial(bottom, top)
    b, c1, c2 = bottom.shape[0], bottom.shape[1], top.shape[1]
    bf, tf = bottom.reshape(b, c1, -1), top.reshape(b, c2, -1)
    g = np.zeros((b, c1, c2))
    for n in range(b):
        for i in range(c1):
            for j in range(c2):
                g[n, i, j] = sum(float(x) * float(y) for x, y in zip(bf[n, i], tf[n, j])) / bf.shape[2]
    return g


def ref_fsp(s_feats, t_feats) -> float:
    total = 0.0
    for i in range(len(s_feats) - 1):
        d = ref_fsp_matrix(s_feats[i], s_feats[i + 1]) - ref_fsp_matrix(t_feats[i], t_feats[i + 1])
        total += float((d**2).mean())
    return total


def test_fsp_tiny_case_by_hand():
    # one sample, bottom 1 channel x 2 positions, top 2 channels.
    # student: bottom (1, 2), top rows (1, 0), (0, 1) -> G = [(1*1 + 2*0)/2, (1*0 + 2*1)/2] = [0.5, 1]
    # teacher: bottom (1, 1), top rows (1, 1), (0, 0) -> G = [1, 0]
    # squared differences 0.25, 1 -> mean 0.625
    s = [torch.tensor([[[1.0, 2.0]]], dtype=F64), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=F64)]
    t = [torch.tensor([[[1.0, 1.0]]], dtype=F64), torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=F64)]
    np.testing.assert_allclose(fsp_matrix(*s).numpy(), [[[0.5, 1.0]]])
    assert fsp_loss(s, t).item() == pytest.approx(0.625, rel=1e-12)


@pytest.mark.parametrize(
    "shapes",
    [
        [(2, 3, 19), (2, 4, 10), (2, 5, 5)],  # MNIST-1D cnn1d-like lengths: 19 -> 10 pooled (overlapping windows)
        [(2, 2, 8, 8), (2, 3, 8, 8), (2, 4, 4, 4), (2, 2, 2, 2)],  # a stem and three stages
    ],
)
def test_fsp_matches_reference_and_its_gradient(shapes):
    s = [randn(*sh, seed=60 + i) for i, sh in enumerate(shapes)]
    t = [randn(*sh, seed=70 + i) for i, sh in enumerate(shapes)]
    for a, b in zip(s, s[1:]):
        np.testing.assert_allclose(fsp_matrix(a, b).numpy(), ref_fsp_matrix(a.numpy(), b.numpy()), rtol=1e-10)
    expected = ref_fsp([f.numpy() for f in s], [f.numpy() for f in t])
    assert fsp_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    assert fsp_loss([f.float() for f in s], [f.float() for f in t]).item() == pytest.approx(expected, rel=1e-5)
    # gradient w.r.t. the student's first map, against finite differences of the reference
    s0 = s[0].clone().requires_grad_()
    fsp_loss([s0, *s[1:]], t).backward()
    tn = [f.numpy() for f in t]
    g = numeric_grad(lambda x: ref_fsp([x, *(f.numpy() for f in s[1:])], tn), s[0].numpy())
    np.testing.assert_allclose(s0.grad.numpy(), g, rtol=1e-6, atol=1e-10)
    inputs = tuple(f.clone().requires_grad_() for f in s)
    assert torch.autograd.gradcheck(lambda *fs: fsp_loss(list(fs), t), inputs)


def test_fsp_limits_and_refusals():
    s = [randn(3, 2, 6, seed=80), randn(3, 4, 3, seed=81)]
    assert fsp_loss(s, [f.clone() for f in s]).item() == 0.0
    # the pair is pooled exactly as a manual 2-position average would
    pooled = s[0].reshape(3, 2, 3, 2).mean(-1)
    np.testing.assert_allclose(fsp_matrix(*s).numpy(), ref_fsp_matrix(pooled.numpy(), s[1].numpy()), rtol=1e-12)
    # scaling one map by c scales its FSP entries by c: the loss against zero maps by c^2
    zero = [torch.zeros_like(f) for f in s]
    assert fsp_loss([s[0] * 3, s[1]], zero).item() == pytest.approx(9 * fsp_loss(s, zero).item(), rel=1e-12)
    with pytest.raises(KdlabError, match=r"FSP compares matrices of equal shape.*\(2, 4\).*\(2, 5\)"):
        fsp_loss(s, [s[0], randn(3, 5, 3, seed=82)])
    with pytest.raises(KdlabError, match=r"FSP needs the same number \(>= 2\)"):
        fsp_loss(s[:1], s[:1])


# ---------------------------------------------------------------------------------------------
# NST
# ---------------------------------------------------------------------------------------------


def ref_nst(s, t) -> float:
    """Per sample: channel maps as unit vectors, k(x, y) = (x . y)^2; mean k(t, t) + mean k(s, s) - 2 mean k(s, t),
    each mean over (batch, channel, channel)."""
    s, t = np_match_spatial(s, t)

    def unit_rows(f):
        f = f.reshape(f.shape[0], f.shape[1], -1)
        n = np.sqrt((f * f).sum(-1, keepdims=True))
        return f / np.maximum(n, 1e-12)

    s, t = unit_rows(s), unit_rows(t)

    def mean_k(a, b):
        vals = [
            float(a[n, i] @ b[n, j]) ** 2 for n in range(len(a)) for i in range(a.shape[1]) for j in range(b.shape[1])
        ]
        return sum(vals) / len(vals)

    return mean_k(t, t) + mean_k(s, s) - 2 * mean_k(s, t)


def test_nst_tiny_case_by_hand():
    # student: two orthogonal unit channels -> k_ss = [[1, 0], [0, 1]], mean 1/2;
    # teacher: one channel (1, 0) -> k_tt = 1; k_st = [1, 0], mean 1/2. MMD^2 = 1 + 1/2 - 1 = 1/2
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=F64)
    t = torch.tensor([[[3.0, 0.0]]], dtype=F64)  # normalised to (1, 0)
    assert nst_loss(s, t).item() == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize(
    "shape_s,shape_t", [((3, 4, 10), (3, 5, 19)), ((2, 3, 4, 4), (2, 6, 8, 8)), ((2, 3, 6), (2, 2, 6))]
)
def test_nst_matches_reference_and_its_gradient(shape_s, shape_t):
    s, t = randn(*shape_s, seed=90), randn(*shape_t, seed=91)
    expected = ref_nst(s.numpy(), t.numpy())
    assert nst_loss(s, t).item() == pytest.approx(expected, rel=1e-10)
    assert nst_loss(s.float(), t.float()).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    sg = s.clone().requires_grad_()
    nst_loss(sg, t).backward()
    g = numeric_grad(lambda x: ref_nst(x, t.numpy()), s.numpy())
    np.testing.assert_allclose(sg.grad.numpy(), g, rtol=1e-6, atol=1e-10)
    assert torch.autograd.gradcheck(lambda x: nst_loss(x, t), (s.clone().requires_grad_(),))


def test_nst_limits_and_invariances():
    s, t = randn(3, 4, 12, seed=92), randn(3, 6, 12, seed=93)
    base = nst_loss(s, t).item()
    assert base > 0
    assert nst_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-14)
    # per-channel positive scaling is removed by the normalisation; the sign of a whole channel map is
    # removed by the even kernel (x . y)^2
    scale = torch.tensor([0.01, 3.0, -1.0, 50.0], dtype=F64).view(1, 4, 1)
    assert nst_loss(s * scale, t).item() == pytest.approx(base, rel=1e-10)
    # permuting the channels (neurons) changes nothing: MMD compares sets of neurons
    assert nst_loss(s[:, [2, 0, 3, 1]], t).item() == pytest.approx(base, rel=1e-12)
    # symmetric in value (the teacher term is only detached)
    assert nst_loss(t, s).item() == pytest.approx(base, rel=1e-12)
    # a zero channel map stays finite (normalised to zero)
    sz = s.clone()
    sz[:, 1] = 0
    assert torch.isfinite(nst_loss(sz, t)) and nst_loss(sz, t).item() == pytest.approx(ref_nst(sz.numpy(), t.numpy()))


def test_nst_teacher_gets_no_gradient_through_its_own_term():
    s, t = randn(2, 3, 5, seed=94), randn(2, 4, 5, seed=95).requires_grad_()
    nst_loss(s, t).backward()
    # only -2 mean k(s, t) reaches the teacher: compare with the gradient of that term alone
    t2 = t.detach().clone().requires_grad_()
    sn = torch.nn.functional.normalize(s.flatten(2), dim=2)
    tn = torch.nn.functional.normalize(t2.flatten(2), dim=2)
    (-2 * (sn @ tn.transpose(1, 2)).pow(2).mean()).backward()
    torch.testing.assert_close(t.grad, t2.grad)
