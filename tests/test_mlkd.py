"""MLKD (Jin, Wang & Lin, CVPR 2023) against independent float64 re-statements of the authors'
``KD_ours.forward_train`` (Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py)
and of its logit-standardized copy (logit-standardization-KD, mdistiller/distillers/MLKD.py):
value and gradient w.r.t. both student logits, the quirks of their masks, the terms' weighted sum,
the one-line refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdlab import CONFIG_DIR
from kdlab.errors import KdlabError
from kdlab.losses.multilevel import (
    batch_level_loss,
    class_level_loss,
    confidence_masks,
    instance_level_loss,
    mlkd_loss,
)
from kdlab.methods import CrossEntropy
from kdlab.methods.base import StepOutputs
from kdlab.methods.multilevel import MLKD, StrongViewCrossEntropy
from tests.reference import F64, kl, randn, softmax

TEMPS = (3.0, 5.0, 2.0, 6.0)  # the authors' temperatures after the configured one


# ---- the reference: the authors' forward_train, re-stated in float64 torch ---------------------------------


def ref_normalize(z):
    """logit-standardization-KD's ``normalize``: (z - mean) / (1e-7 + unbiased std), by hand."""
    c = z.shape[-1]
    mean = z.sum(-1, keepdim=True) / c
    std = (((z - mean) ** 2).sum(-1, keepdim=True) / (c - 1)).sqrt()
    return (z - mean) / (1e-7 + std)


def ref_probs(z, T):
    e = torch.exp(z / T - (z / T).amax(1, keepdim=True))
    return e / e.sum(1, keepdim=True)


def ref_kd(s, t, T, ls=False):
    """The authors' ``kd_loss(..., reduce=True)``: sum_c p_t (log p_t - log p_s), batch mean, times T^2."""
    if ls:
        s, t = ref_normalize(s), ref_normalize(t)
    p_s, p_t = ref_probs(s, T), ref_probs(t, T)
    return (p_t * (p_t.log() - p_s.log())).sum(1).mean() * T**2


def ref_cc(s, t, T):
    """``cc_loss(reduce=True)``: ||P_t^T P_t - P_s^T P_s||^2 / classes."""
    p_s, p_t = ref_probs(s, T), ref_probs(t, T)
    diff = torch.einsum("bi,bj->ij", p_t, p_t) - torch.einsum("bi,bj->ij", p_s, p_s)
    return (diff**2).sum() / s.shape[1]


def ref_bc(s, t, T):
    """``bc_loss(reduce=True)``: ||P_t P_t^T - P_s P_s^T||^2 / batch."""
    p_s, p_t = ref_probs(s, T), ref_probs(t, T)
    diff = torch.einsum("ic,jc->ij", p_t, p_t) - torch.einsum("ic,jc->ij", p_s, p_s)
    return (diff**2).sum() / s.shape[0]


def ref_ce(z, y):
    return -(z - torch.logsumexp(z, 1, keepdim=True))[torch.arange(len(y)), y].mean()


def ref_masks(tw):
    """The authors' masks: numpy's percentile 50 of the teacher's weak softmax (max per sample, sum per class)."""
    p = ref_probs(tw, 1.0).numpy()
    conf, cls = p.max(1), p.sum(0)
    return torch.from_numpy(conf <= np.percentile(conf, 50)), torch.from_numpy(cls <= np.percentile(cls, 50))


def ref_forward_train(sw, ss, tw, ts, y, T, ce_w, kd_w, ls=False):
    """The losses dict of ``forward_train``, step by step as the authors write it: each reduced loss
    (a scalar) times the mask, then ``.mean()``; the strong sum's last two temperatures on the weak
    view; no strong-view CC / BC in the dict."""
    mask, cmask = ref_masks(tw)
    temps = (T, *TEMPS)
    kd_weak = sum(kd_w * (ref_kd(sw, tw, tt, ls) * mask).mean() for tt in temps)
    kd_strong = sum(kd_w * ref_kd(ss, ts, tt, ls) for tt in temps[:3]) + sum(
        kd_w * ref_kd(sw, tw, tt, ls) for tt in temps[3:]
    )
    return {
        "loss_ce": ce_w * (ref_ce(sw, y) + ref_ce(ss, y)),
        "loss_kd": kd_weak + kd_strong,
        "loss_cc": sum(kd_w * (ref_cc(sw, tw, tt) * cmask).mean() for tt in temps),
        "loss_bc": sum(kd_w * (ref_bc(sw, tw, tt) * mask).mean() for tt in temps),
    }


def leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def grads(total, xs):
    return torch.autograd.grad(total, xs)


# ---- the hand-built case ----------------------------------------------------------------------------------

# 4 samples, 3 classes. Teacher (weak) rows [k, 0, 0]: confidences rise with k, so the median lies
# between k = 1 and k = 2 and the sample mask keeps rows k = 0, 1 (f_b = 1/2); classes 1 and 2 get
# equal sums below class 0's, the median over classes is theirs, the class mask keeps both (f_c = 2/3).
HAND_TW = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
HAND_SW = [[0.5, -0.5, 0.0], [0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [-1.0, 0.0, 1.5]]
HAND_TS = [[1.0, 0.5, -0.5], [0.0, 0.0, 2.0], [1.5, -1.0, 0.0], [0.5, 0.5, 0.5]]
HAND_SS = [[0.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.5, 0.0, -0.5], [2.0, 1.0, 0.0]]


def py_gram_loss(s, t, T, level):
    """Plain-Python squared distance of the Gram matrices, over samples ('batch') or classes ('class')."""
    ps = [softmax([v / T for v in r]) for r in s]
    pt = [softmax([v / T for v in r]) for r in t]
    if level == "class":
        ps, pt = [list(col) for col in zip(*ps)], [list(col) for col in zip(*pt)]
    n = len(ps)
    return sum(
        (sum(a * b for a, b in zip(pt[i], pt[j])) - sum(a * b for a, b in zip(ps[i], ps[j]))) ** 2
        for i in range(n)
        for j in range(n)
    ) / len(ps if level == "batch" else pt)


def py_kd(s, t, T):
    return sum(kl(softmax([v / T for v in tr]), softmax([v / T for v in sr])) for sr, tr in zip(s, t)) / len(s) * T**2


def py_median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def test_hand_built_case_parts_and_masks():
    T = 4.0
    conf = [max(softmax(r)) for r in HAND_TW]
    cls = [sum(col) for col in zip(*[softmax(r) for r in HAND_TW])]
    f_b = sum(c <= py_median(conf) for c in conf) / len(conf)
    f_c = sum(c <= py_median(cls) for c in cls) / len(cls)
    assert (f_b, f_c) == (0.5, 2 / 3)  # as reasoned above
    sample_mask, class_mask = confidence_masks(torch.tensor(HAND_TW, dtype=F64))
    assert sample_mask.tolist() == [True, True, False, False] and class_mask.tolist() == [False, True, True]

    temps = (T, *TEMPS)
    expected = {
        "kd_weak": f_b * sum(py_kd(HAND_SW, HAND_TW, tt) for tt in temps),
        "kd_strong": sum(py_kd(HAND_SS, HAND_TS, tt) for tt in temps[:3])
        + sum(py_kd(HAND_SW, HAND_TW, tt) for tt in temps[3:]),
        "cc": f_c * sum(py_gram_loss(HAND_SW, HAND_TW, tt, "class") for tt in temps),
        "bc": f_b * sum(py_gram_loss(HAND_SW, HAND_TW, tt, "batch") for tt in temps),
    }
    sw, tw, ss, ts = (torch.tensor(v, dtype=F64) for v in (HAND_SW, HAND_TW, HAND_SS, HAND_TS))
    parts = mlkd_loss(sw, tw, ss, ts, T)
    assert set(parts) == set(expected)
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("standardize", [False, True])
def test_hand_built_case_matches_forward_train_value_and_gradient(standardize):
    T, kd_w = (2.0, 9.0) if standardize else (4.0, 0.9)
    sw, tw, ss, ts = (torch.tensor(v, dtype=F64) for v in (HAND_SW, HAND_TW, HAND_SS, HAND_TS))
    y = torch.tensor([0, 1, 2, 0])
    _check_against_reference(sw, tw, ss, ts, y, T, kd_w, standardize)


def _check_against_reference(sw, tw, ss, ts, y, T, kd_w, standardize):
    a_w, a_s = leaves(sw, ss)
    ref = ref_forward_train(a_w, a_s, tw, ts, y, T, 0.1, kd_w, standardize)
    ref_distill = ref["loss_kd"] + ref["loss_cc"] + ref["loss_bc"]
    b_w, b_s = leaves(sw, ss)
    parts = mlkd_loss(b_w, tw, b_s, ts, T, standardize)
    ours = kd_w * (parts["kd_weak"] + parts["kd_strong"])
    torch.testing.assert_close(ours, ref["loss_kd"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kd_w * parts["cc"], ref["loss_cc"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kd_w * parts["bc"], ref["loss_bc"], rtol=1e-12, atol=1e-14)
    total = kd_w * sum(parts.values())
    for g_ours, g_ref in zip(grads(total, [b_w, b_s]), grads(ref_distill, [a_w, a_s])):
        assert g_ref.abs().max() > 0
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-13)


# ---- random cases -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize(("b", "c", "seed"), [(8, 10, 0), (7, 5, 1), (16, 100, 2)])
def test_random_cases_match_forward_train_value_and_gradient(b, c, seed, standardize):
    sw, ss = randn(b, c, seed=seed) * 3, randn(b, c, seed=seed + 10) * 3
    tw, ts = randn(b, c, seed=seed + 20) * 5, randn(b, c, seed=seed + 30) * 5
    y = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(seed))
    T, kd_w = (2.0, 9.0) if standardize else (4.0, 0.9)
    _check_against_reference(sw, tw, ss, ts, y, T, kd_w, standardize)


def test_level_losses_are_zero_when_the_student_matches_and_positive_otherwise():
    z, other = randn(6, 5, seed=3) * 2, randn(6, 5, seed=4) * 2
    for fn in (instance_level_loss, batch_level_loss, class_level_loss):
        assert fn(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-14)
        assert fn(other, z, 3.0).item() > 1e-6
    s = z.clone().requires_grad_(True)
    total = sum(mlkd_loss(s, z, s, z, 4.0).values())
    assert total.item() == pytest.approx(0.0, abs=1e-13)
    assert torch.autograd.grad(total, s)[0].abs().max() < 1e-12


# ---- the mask quirks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c", "seed"), [(64, 100, 0), (63, 100, 1), (8, 10, 2), (2, 10, 3)])
def test_masks_equal_numpy_percentile_in_float32(b, c, seed):
    """As the authors: the float32 softmax to numpy, ``np.percentile(., 50)``, ``tensor.le(threshold)``."""
    t = randn(b, c, seed=seed, dtype=torch.float32) * 4
    p = torch.softmax(t, dim=1)
    conf, cls = p.max(dim=1).values, p.sum(dim=0)
    expected_s = conf.le(np.percentile(conf.numpy().flatten(), 50))
    expected_c = cls.le(np.percentile(cls.numpy().flatten(), 50))
    sample_mask, class_mask = confidence_masks(t)
    assert torch.equal(sample_mask, expected_s) and torch.equal(class_mask, expected_c)
    assert sample_mask.sum().item() == math.ceil(b / 2)  # distinct values: half of an even batch


@pytest.mark.parametrize(
    ("ks", "kept"),
    [
        ([0.0, 1.0, 2.0, 3.0], 2),  # even, distinct: median halfway between the middle two
        ([0.0, 1.0, 1.0, 1.0, 2.0, 3.0], 4),  # even, ties at the median: all tied rows kept
        ([0.0, 2.0, 1.0, 4.0, 3.0], 3),  # odd: the middle value, kept
    ],
)
def test_sample_mask_is_at_or_below_the_interpolated_median(ks, kept):
    t = torch.tensor([[k, 0.0, 0.0] for k in ks], dtype=F64)  # confidence rises with k
    sample_mask, _ = confidence_masks(t)
    assert sample_mask.sum().item() == kept
    conf = torch.softmax(t, 1).max(1).values
    assert torch.equal(sample_mask, conf <= conf.sort().values[kept - 1])


def test_a_mask_scales_the_batch_loss_instead_of_selecting_samples():
    """``(kd_loss(reduce=True) * mask).mean()`` = fraction kept x the whole batch's KD, which is
    not the KD of the kept samples."""
    s, t = randn(8, 10, seed=5) * 3, randn(8, 10, seed=6) * 5
    zeros = torch.zeros_like(s)  # the strong view out of the way: its parts do not involve the mask
    parts = mlkd_loss(s, t, zeros, zeros, 4.0)
    temps = (4.0, *TEMPS)
    whole = sum(ref_kd(s, t, tt) for tt in temps)
    assert parts["kd_weak"].item() == pytest.approx(0.5 * whole.item(), rel=1e-12)
    keep, _ = confidence_masks(t)
    selected = sum(ref_kd(s[keep], t[keep], tt) for tt in temps)
    assert abs(parts["kd_weak"].item() - selected.item()) > 1e-3 * selected.item()


def test_strong_sum_reads_the_weak_view_at_temperatures_2_and_6():
    s, t = randn(6, 5, seed=7) * 2, randn(6, 5, seed=8) * 4
    ss, ts = randn(6, 5, seed=9) * 2, randn(6, 5, seed=10) * 4
    parts = mlkd_loss(s, t, ss, ts, 4.0)
    strong = sum(ref_kd(ss, ts, tt) for tt in (4.0, 3.0, 5.0)) + ref_kd(s, t, 2.0) + ref_kd(s, t, 6.0)
    assert parts["kd_strong"].item() == pytest.approx(strong.item(), rel=1e-12)
    # the strong view's CC and BC are not part of the loss: changing only the strong view moves only kd_strong
    moved = mlkd_loss(s, t, ss * 2, ts, 4.0)
    assert all(torch.equal(moved[k], parts[k]) for k in ("kd_weak", "cc", "bc"))
    assert not torch.equal(moved["kd_strong"], parts["kd_strong"])


def test_standardize_changes_only_the_instance_level_parts():
    s, t = randn(6, 5, seed=11) * 2, randn(6, 5, seed=12) * 4
    ss, ts = randn(6, 5, seed=13) * 2, randn(6, 5, seed=14) * 4
    plain, ls = mlkd_loss(s, t, ss, ts, 2.0), mlkd_loss(s, t, ss, ts, 2.0, standardize=True)
    assert torch.equal(plain["cc"], ls["cc"]) and torch.equal(plain["bc"], ls["bc"])
    assert not torch.equal(plain["kd_weak"], ls["kd_weak"]) and not torch.equal(plain["kd_strong"], ls["kd_strong"])
    # standardized KD ignores each row's shift and scale
    shifted = mlkd_loss(3 * s + 1, t, 0.5 * ss - 2, ts, 2.0, standardize=True)
    torch.testing.assert_close(shifted["kd_strong"], ls["kd_strong"], rtol=1e-6, atol=0)


# ---- the terms --------------------------------------------------------------------------------------------


def step(sw, tw, ss, ts, y) -> StepOutputs:
    return StepOutputs(sw, y, teacher_logits=tw, student_logits_strong=ss, teacher_logits_strong=ts)


@pytest.mark.parametrize(("T", "kd_w", "standardize"), [(4.0, 0.9, False), (2.0, 9.0, True)])
def test_terms_weighted_sum_equals_the_authors_total(T, kd_w, standardize):
    b, c = 8, 10
    sw, ss = leaves(randn(b, c, seed=21) * 3, randn(b, c, seed=22) * 3)
    tw, ts = randn(b, c, seed=23) * 5, randn(b, c, seed=24) * 5
    y = torch.randint(0, c, (b,), generator=torch.Generator().manual_seed(25))
    terms = {
        "ce": CrossEntropy(0.1),
        "ce_strong": StrongViewCrossEntropy(0.1),
        "mlkd": MLKD(kd_w, temperature=T, standardize=standardize),
    }
    out = step(sw, tw, ss, ts, y)
    losses = {name: term(out) for name, term in terms.items()}
    a_w, a_s = leaves(sw, ss)
    ref = ref_forward_train(a_w, a_s, tw, ts, y, T, 0.1, kd_w, standardize)
    torch.testing.assert_close(losses["ce"] + losses["ce_strong"], ref["loss_ce"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(losses["mlkd"], ref["loss_kd"] + ref["loss_cc"] + ref["loss_bc"], rtol=1e-12, atol=0)
    ours, theirs = sum(losses.values()), sum(ref.values())
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    for g_ours, g_ref in zip(grads(ours, [sw, ss]), grads(theirs, [a_w, a_s])):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-13)


def test_term_flags_and_the_method_config():
    assert MLKD.reads_strong_view and MLKD.needs_teacher and not MLKD.task_loss
    assert StrongViewCrossEntropy.reads_strong_view and StrongViewCrossEntropy.task_loss
    assert not StrongViewCrossEntropy.needs_teacher
    cfg = OmegaConf.load(CONFIG_DIR / "method" / "mlkd.yaml")
    terms = {name: instantiate(node) for name, node in cfg.terms.items()}
    assert cfg.name == "mlkd" and list(terms) == ["ce", "ce_strong", "mlkd"]
    assert type(terms["ce"]) is CrossEntropy and isinstance(terms["ce_strong"], StrongViewCrossEntropy)
    assert terms["ce"].weight == terms["ce_strong"].weight == 0.1  # the authors' CE_WEIGHT on both views
    mlkd = terms["mlkd"]
    assert (mlkd.weight, mlkd.temperatures, mlkd.standardize) == (0.9, (4.0, 3.0, 5.0, 2.0, 6.0), False)


def test_offline_training_step_feeds_the_strong_view_to_the_terms():
    from kdlab.models import create_model
    from kdlab.strategies import OfflineDistillation

    torch.manual_seed(0)
    student, teacher = create_model("mlp", 10, (1, 40)), create_model("cnn1d", 10, (1, 40))
    terms = {"ce": CrossEntropy(0.1), "ce_strong": StrongViewCrossEntropy(0.1), "mlkd": MLKD(0.9)}
    module = OfflineDistillation(student, terms, torch.optim.SGD, 10, (1, 40), teacher=teacher)
    module.train()
    g = torch.Generator().manual_seed(1)
    x, xs = torch.randn(8, 1, 40, generator=g), torch.randn(8, 1, 40, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    out = module.training_step((x, y, torch.arange(8), None, xs), 0)
    with torch.no_grad():
        sw, ss, tw, ts = student(x), student(xs), teacher(x), teacher(xs)
    ref = ref_forward_train(sw.double(), ss.double(), tw.double(), ts.double(), y, 4.0, 0.1, 0.9)
    torch.testing.assert_close(out["loss_ce"] + out["loss_ce_strong"], ref["loss_ce"].float(), rtol=1e-5, atol=1e-6)
    distill = (ref["loss_kd"] + ref["loss_cc"] + ref["loss_bc"]).float()
    torch.testing.assert_close(out["loss_mlkd"], distill, rtol=1e-5, atol=1e-6)


# ---- bad input --------------------------------------------------------------------------------------------


def test_without_a_strong_view_the_terms_fail_in_one_line():
    z = randn(4, 5, seed=30)
    y = torch.zeros(4, dtype=torch.long)
    no_strong = StepOutputs(z, y, teacher_logits=z)
    only_student = StepOutputs(z, y, teacher_logits=z, student_logits_strong=z)
    for term, out in [(MLKD(), no_strong), (MLKD(), only_student), (StrongViewCrossEntropy(), no_strong)]:
        with pytest.raises(KdlabError, match=r"set data\.strong_view=true") as e:
            term(out)
        assert "\n" not in str(e.value) and type(term).__name__ in str(e.value)


def test_mismatched_logits_and_bad_arguments_are_refused():
    a, b = randn(4, 5, seed=31), randn(4, 6, seed=32)
    with pytest.raises(
        KdlabError, match=r"MLKD compares \(batch, classes\) logits of one shape.*student_strong \(4, 6\)"
    ):
        mlkd_loss(a, a, b, a, 4.0)
    with pytest.raises(KdlabError, match=r"one shape"):
        mlkd_loss(a[None], a[None], a[None], a[None], 4.0)  # (1, 4, 5): not (batch, classes)
    with pytest.raises(KdlabError, match=r"MLKD.temperature=0.0 is not a number > 0"):
        MLKD(temperature=0.0)
    with pytest.raises(KdlabError, match=r"MLKD.weight=-1.0 is not a number >= 0"):
        MLKD(weight=-1.0)
