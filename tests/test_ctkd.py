"""CTKD (Li et al., AAAI 2023): the gradient reversal, the curriculum of its strength, the learnable
temperature in the KD / DKD / DIST terms, against independent float64 re-statements of the authors'
code (zhengli97/CTKD: models/temp_global.py, train_student.py's CosineDecay / LinearDecay,
helper/loops.py, distiller_zoo/KD.py and DKD.py; the README's instance-wise KL_Loss), value and
gradient, on the student's logits and on the temperature's parameter; the adversarial game over a
few optimizer steps; the config and its one-line refusals."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import compose, instantiate, validate
from kdlab.errors import KdlabError
from kdlab.losses import dist_loss, dkd_loss, kd_loss
from kdlab.methods.base import StepOutputs
from kdlab.methods.curriculum import CurriculumTemperature, GradientReversal, cosine_decay, linear_decay
from kdlab.methods.response import DIST, DKD, KD
from tests.reference import F64, randn

# ---------------------------------------------------------------- independent re-statements (float64)


class RefReversal(torch.autograd.Function):
    """The authors' GradientReversalFunction: a copy forward, the gradient times lambda_ backward."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grads):
        return grads.new_tensor(ctx.lambda_) * grads, None


def ref_cosine(n: int, hi: float, lo: float, loops: float) -> float:
    """The authors' decay value at their 1-based epoch n, as a move from hi towards lo by the share
    (1 - cos(pi m / loops)) / 2, m = n clipped to [0, loops]."""
    m = min(max(n, 0), loops)
    return hi + (lo - hi) * (1 - math.cos(math.pi * m / loops)) / 2


def ref_paper_lambda(n: int, loops: float) -> float:
    """The paper's Eq. 11 with lambda_min = 0, lambda_max = 1: 0 -> 1 over ``loops`` epochs."""
    return 0.0 + 0.5 * (1.0 - 0.0) * (1 + math.cos((1 + min(n, loops) / loops) * math.pi))


def ref_temperature(g: torch.Tensor, lambda_: float, t_start: float, t_end: float) -> torch.Tensor:
    """helper/loops.py: opt.t_start + opt.t_end * torch.sigmoid(Global_T(...)), Global_T = GRL(global_T)."""
    return t_start + t_end * torch.sigmoid(RefReversal.apply(g, lambda_))


def ref_kl_div_sum(log_input, target):
    """F.kl_div(log_input, target, reduction='sum') as the authors' torch 1.11 computes it: each term
    target * (log target - input), 0 where target = 0, and no gradient to a zero target (its
    kl_div_target_backward masks it; pytorch/pytorch#89558: "1.12 ... returns zero derivative").
    Today's xlogy-based kl_div gives that gradient NaN instead, which DKD's target-lowered-by-1000
    softmax (exactly 0 there) hits once the temperature learns: this is the authors' DKD+CTKD on their
    torch (1.11, README), not on today's."""
    safe = torch.where(target > 0, target, torch.ones_like(target))
    return (target * (safe.log() - log_input)).sum()


def ref_distill_kl(y_s, y_t, T):
    """distiller_zoo/KD.py DistillKL with a tensor temperature: KLDivLoss(batchmean) * T * T."""
    return ref_kl_div_sum(F.log_softmax(y_s / T, dim=1), F.softmax(y_t / T, dim=1)) / y_s.shape[0] * T * T


def ref_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """distiller_zoo/DKD.py DKDloss: probabilities, cat_mask, the target lowered by 1000."""
    gt = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdims=True), (p * other).sum(1, keepdims=True)], 1)

    ps = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pt = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = ref_kl_div_sum(torch.log(ps), pt) * temperature**2 / target.shape[0]
    pt2 = F.softmax(logits_teacher / temperature - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(logits_student / temperature - 1000.0 * gt, dim=1)
    nckd = ref_kl_div_sum(log_ps2, pt2) * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def ref_instance_kd(y_s, y_t, T):
    """The authors' README for the instance-wise temperature: KL_Loss per sample, summed, / T.shape[0]."""

    def kl_loss(output_batch, teacher_outputs, t):
        output_batch = F.log_softmax(output_batch.unsqueeze(0) / t, dim=1)
        teacher_outputs = F.softmax(teacher_outputs.unsqueeze(0) / t, dim=1) + 10 ** (-7)
        return t * t * torch.sum(torch.mul(teacher_outputs, torch.log(teacher_outputs) - output_batch))

    total = 0
    for i in range(T.shape[0]):
        total += kl_loss(y_s[i], y_t[i], T[i])
    return total / T.shape[0]


def step(s, t, target=None, epoch=0) -> StepOutputs:
    target = torch.arange(len(s)) % s.shape[1] if target is None else target
    return StepOutputs(s, target, teacher_logits=t, epoch=epoch)


# ---------------------------------------------------------------- gradient reversal and curriculum


@pytest.mark.parametrize("scale", [-1.0, -0.0245, 0.0, 0.5])
def test_reversal_is_a_copy_forward_and_scales_the_gradient_backward(scale):
    x = randn(3, 4, seed=0).requires_grad_(True)
    y = GradientReversal.apply(x, scale)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
    upstream = randn(3, 4, seed=1)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream * scale)  # the authors' sign: lambda_ itself, negative to reverse


def test_cosine_curriculum_is_the_authors_per_1_based_epoch():
    # train_student.py evaluates CosineDecay at epoch = 1, 2, ...; kdlab's epochs are 0-based
    module = CurriculumTemperature()  # --decay_max 0 --decay_min -1 --decay_loops 10
    logged = {0: -0.02447174185242318, 1: -0.09549150281252627, 2: -0.20610737385376343, 4: -0.5, 9: -1.0}
    for epoch, value in logged.items():  # the decay_value of logit-standardization-KD/logs/CTKD/*.txt
        assert module.scale(epoch) == pytest.approx(value, rel=1e-12, abs=1e-15)
    for epoch in range(0, 15):
        n = epoch + 1
        assert module.scale(epoch) == pytest.approx(ref_cosine(n, 0.0, -1.0, 10), abs=1e-12)
        assert module.scale(epoch) == pytest.approx(-ref_paper_lambda(n, 10), abs=1e-12)  # the paper's lambda
    for n in (-3, 0, 1, 2.5, 5, 7, 40):  # other ranges and loop counts, clipped at both ends
        assert cosine_decay(n, 0.3, -2.0, 5) == pytest.approx(ref_cosine(n, 0.3, -2.0, 5), abs=1e-12)
    assert CurriculumTemperature(decay_loops=5).scale(4) == -1.0  # the ImageNet script: 5 loops


def test_linear_curriculum_keeps_the_authors_quirks():
    # LinearDecay: -i (max - min) / loops with i clipped to [0, loops - 1], no offset by max
    for n, expected in [(-2, 0.0), (0, 0.0), (1, -0.1), (5, -0.5), (9, -0.9), (10, -0.9), (50, -0.9)]:
        assert linear_decay(n, 0.0, -1.0, 10) == pytest.approx(expected, abs=1e-12)
    assert linear_decay(3, 0.5, -1.5, 4) == pytest.approx(-1.5, abs=1e-12)  # starts from 0, not from max
    assert CurriculumTemperature(decay="linear").scale(0) == pytest.approx(-0.1)


def test_global_temperature_starts_where_the_authors_does():
    module = CurriculumTemperature()
    s, t = randn(4, 6, seed=2), randn(4, 6, seed=3)
    temperature = module(s, t, epoch=0)
    assert temperature.shape == (1,)
    assert temperature.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # Global_T = ones(1)
    assert module.last.item() == pytest.approx(temperature.item())


# ---------------------------------------------------------------- one step vs the authors' loop


def ctkd_term(cls, epoch_value: float, **kwargs):
    term = cls(curriculum={"variant": "global", "t_start": 1.0, "t_end": 20.0}, **kwargs).double()
    with torch.no_grad():
        term.curriculum.global_t.fill_(epoch_value)
    return term


@pytest.mark.parametrize("epoch, g", [(0, 1.0), (4, -0.7), (12, 0.35)])
def test_kd_step_matches_the_authors_loop_on_student_and_temperature(epoch, g):
    s, t = randn(8, 10, seed=4) * 3, randn(8, 10, seed=5) * 4
    target = torch.arange(8) % 10
    term = ctkd_term(KD, g, weight=0.9)
    s_k = s.clone().requires_grad_(True)
    loss = F.cross_entropy(s_k, target) * 0.1 + term(step(s_k, t, target, epoch))
    loss.backward()

    # helper/loops.py: loss = gamma * CE + alpha * DistillKL(logit_s, logit_t, temp), decay_value at epoch + 1
    lam = ref_cosine(epoch + 1, 0.0, -1.0, 10)
    s_r, g_r = s.clone().requires_grad_(True), torch.tensor([g], dtype=F64, requires_grad=True)
    temp = ref_temperature(g_r, lam, 1.0, 20.0)
    ref = 0.1 * F.cross_entropy(s_r, target) + 0.9 * ref_distill_kl(s_r, t, temp)
    ref.sum().backward()

    assert loss.shape == () and loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(s_k.grad, s_r.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(term.curriculum.global_t.grad, g_r.grad, rtol=1e-10, atol=1e-15)
    # the reversal, apart from autograd: lambda times the true derivative (central difference in g)
    h = 1e-6

    def kd_at(v):
        temp = 1.0 + 20.0 / (1 + math.exp(-v))
        return 0.9 * ref_distill_kl(s, t, torch.tensor([temp], dtype=F64)).item()

    true = (kd_at(g + h) - kd_at(g - h)) / (2 * h)
    assert term.curriculum.global_t.grad.item() == pytest.approx(lam * true, rel=1e-5, abs=1e-12)
    assert math.copysign(1, term.curriculum.global_t.grad.item()) == -math.copysign(1, true)  # reversed


@pytest.mark.parametrize("standardize", [False, True])
def test_dkd_step_matches_the_authors_loop_on_student_and_temperature(standardize):
    s, t = randn(8, 10, seed=6) * 3, randn(8, 10, seed=7) * 5
    target = torch.tensor([0, 3, 3, 9, 1, 5, 7, 2])
    epoch, g = 2, 0.4
    term = ctkd_term(DKD, g, alpha=1.0, beta=2.0, warmup_epochs=0, standardize=standardize)
    s_k = s.clone().requires_grad_(True)
    loss = F.cross_entropy(s_k, target) + term(step(s_k, t, target, epoch))
    loss.backward()

    def normalize(z):  # logit-standardization-KD's normalize
        return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, keepdims=True))

    # helper/loops.py with --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 (the KL term weighted 0)
    lam = ref_cosine(epoch + 1, 0.0, -1.0, 10)
    s_r, g_r = s.clone().requires_grad_(True), torch.tensor([g], dtype=F64, requires_grad=True)
    temp = ref_temperature(g_r, lam, 1.0, 20.0)
    ls, lt = (normalize(s_r), normalize(t)) if standardize else (s_r, t)
    ref = F.cross_entropy(s_r, target) + ref_dkd(ls, lt, target, 1.0, 2.0, temp)
    ref.sum().backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(s_k.grad, s_r.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(term.curriculum.global_t.grad, g_r.grad, rtol=1e-8, atol=1e-14)


def test_instance_kd_is_the_authors_per_sample_loss_value_and_gradient():
    s, t = randn(6, 10, seed=8) * 3, randn(6, 10, seed=9) * 4
    temps = 1.0 + 20.0 * torch.rand(6, 1, generator=torch.Generator().manual_seed(10), dtype=F64)
    s1, T1 = s.clone().requires_grad_(True), temps.clone().requires_grad_(True)
    s2, T2 = s.clone().requires_grad_(True), temps.clone().requires_grad_(True)
    value, ref = kd_loss(s1, t, T1), ref_instance_kd(s2, t, T2)
    value.backward()
    ref.sum().backward()
    assert value.shape == () and value.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(T1.grad, T2.grad, rtol=1e-10, atol=1e-13)


def test_instance_dkd_weights_each_sample_by_its_own_t_squared():
    s, t = randn(5, 7, seed=11) * 3, randn(5, 7, seed=12) * 4
    target = torch.tensor([0, 6, 2, 2, 4])
    temps = torch.tensor([[1.5], [3.0], [7.0], [2.2], [15.0]], dtype=F64)
    rows = [dkd_loss(s[i : i + 1], t[i : i + 1], target[i : i + 1], 1.0, 8.0, temps[i].item()) for i in range(5)]
    got = dkd_loss(s, t, target, 1.0, 8.0, temps)
    assert got.item() == pytest.approx(torch.stack(rows).mean().item(), rel=1e-12)


def test_a_global_tensor_temperature_is_the_float_one():
    s, t = randn(6, 9, seed=13) * 2, randn(6, 9, seed=14) * 3
    target = torch.arange(6)
    T = torch.tensor([3.0], dtype=F64)
    for fixed, learned in [
        (kd_loss(s, t, 3.0), kd_loss(s, t, T)),
        (dkd_loss(s, t, target, 1.0, 8.0, 3.0), dkd_loss(s, t, target, 1.0, 8.0, T)),
        (dist_loss(s, t, 2.0, 2.0, 3.0), dist_loss(s, t, 2.0, 2.0, T)),
    ]:
        assert learned.shape == () and learned.item() == pytest.approx(fixed.item(), rel=1e-14)
    with pytest.raises(KdlabError, match="one temperature for the batch"):
        dist_loss(s, t, 2.0, 2.0, T.expand(6, 1))
    with pytest.raises(KdlabError, match=r"shape \(\), \(1,\) or \(batch, 1\), got \(5, 1\)"):
        kd_loss(s, t, T.expand(5, 1))


def test_instance_module_reverses_into_its_mlp_and_sends_nothing_to_the_student():
    torch.manual_seed(0)
    module = CurriculumTemperature(variant="instance", num_classes=10, hidden=16).double()
    s, t = randn(6, 10, seed=15).requires_grad_(True), randn(6, 10, seed=16)
    temperature = module(s, t, epoch=6)
    assert temperature.shape == (6, 1) and bool(((temperature > 1) & (temperature < 21)).all())
    assert temperature.std() > 0  # one per sample
    upstream = randn(6, 1, seed=17)
    temperature.backward(upstream)
    assert s.grad is None  # the student's probabilities enter detached
    reversed_grads = [p.grad.clone() for p in module.mlp.parameters()]
    module.zero_grad()
    probs = torch.cat([F.softmax(t, -1), F.softmax(s.detach(), -1)], -1)  # teacher first, as mlp(logit_t, logit_s)
    (1 + 20 * torch.sigmoid(module.mlp(probs))).backward(upstream)
    scale = ref_cosine(7, 0.0, -1.0, 10)
    for got, plain in zip(reversed_grads, module.mlp.parameters()):
        torch.testing.assert_close(got, scale * plain.grad, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the adversarial game


def test_a_few_steps_the_temperature_ascends_the_loss_the_student_descends():
    """SGD on the student's logits and the temperature together, at full reversal (epoch 10 on):
    each step, the temperature's move alone raises the KD loss and the student's alone lowers it;
    without the reversal (scale +1) the temperature would move the other way."""
    s0, t = randn(16, 10, seed=18) * 2, randn(16, 10, seed=19) * 4
    target = torch.arange(16) % 10
    moves = {}
    for decay_min in (-1.0, 1.0):  # -1: the authors' reversal; +1: a cooperative temperature
        term = KD(curriculum={"decay_min": decay_min, "t_start": 1.0, "t_end": 20.0}).double()
        with torch.no_grad():
            term.curriculum.global_t.fill_(-1.0)  # T = 1 + 20 sigmoid(-1) = 6.38
        s = nn.Parameter(s0.clone())
        opt = torch.optim.SGD([s, term.curriculum.global_t], lr=0.5)
        g_before = term.curriculum.global_t.item()
        for _ in range(5):
            g = term.curriculum.global_t.detach().clone()
            before = term.loss(step(s, t, target, epoch=12))
            opt.zero_grad()
            before.backward()
            s_old = s.detach().clone()
            opt.step()
            with torch.no_grad():
                temperature_moved = kd_loss(s_old, t, 1 + 20 * torch.sigmoid(term.curriculum.global_t))
                student_moved = kd_loss(s.detach(), t, 1 + 20 * torch.sigmoid(g))
            if decay_min < 0:
                assert temperature_moved > before.detach()  # ascent
            else:
                assert temperature_moved < before.detach()
            assert student_moved < before.detach()  # descent
        moves[decay_min] = term.curriculum.global_t.item() - g_before
    assert moves[-1.0] * moves[1.0] < 0 and abs(moves[-1.0]) > 1e-4


# ---------------------------------------------------------------- terms and configs


def test_default_terms_have_no_curriculum_and_no_state():
    for term in (KD(), DKD(), DIST()):
        assert term.curriculum is None and not list(term.state_dict()) and not list(term.parameters())
    s, t = randn(4, 5, seed=20), randn(4, 5, seed=21)
    assert torch.equal(KD(temperature=3.0).loss(step(s, t)), kd_loss(s, t, 3.0))
    assert list(KD(curriculum={}).state_dict()) == ["curriculum.global_t"]


def test_dist_takes_the_global_temperature_and_refuses_the_instance_one():
    s, t = randn(6, 9, seed=22), randn(6, 9, seed=23)
    term = ctkd_term(DIST, 0.0)
    got = term.loss(step(s, t))
    assert got.item() == pytest.approx(dist_loss(s, t, 2.0, 2.0, 11.0).item(), rel=1e-12)  # 1 + 20 sigmoid(0)
    with pytest.raises(KdlabError, match="use curriculum.variant=global"):
        DIST(curriculum={"variant": "instance"})


class NoClassCount(nn.Module):
    def forward(self, x):
        return x


def test_the_instance_mlp_takes_the_class_count_from_the_student():
    term = KD(curriculum={"variant": "instance"})
    with pytest.raises(KdlabError, match="set curriculum.num_classes"):
        term.loss(step(randn(2, 4, seed=24), randn(2, 4, seed=25)))
    student = nn.Linear(3, 4)
    student.num_classes = 4
    term.select_taps(student, None)
    assert term.curriculum.mlp[0].in_features == 8
    with pytest.raises(KdlabError, match=r"KD.curriculum.variant=instance .* set KD.curriculum.num_classes"):
        KD(curriculum={"variant": "instance"}).select_taps(NoClassCount(), None)


def test_ctkd_config_composes_with_the_authors_defaults():
    cfg, _ = compose(["method=ctkd"])
    cfg.paths.output_dir = "x"
    validate(cfg)
    terms = instantiate(cfg.method.terms)
    assert (terms["ce"].weight, terms["kd"].weight) == (0.1, 0.9)
    c = terms["kd"].curriculum
    assert (c.variant, c.t_start, c.t_end, c.decay, c.decay_max, c.decay_min, c.decay_loops) == (
        "global",
        1.0,
        20.0,
        "cosine",
        0.0,
        -1.0,
        10.0,
    )
    cfg, _ = compose(["method=dkd", "+method.terms.dkd.curriculum.variant=instance"])
    assert instantiate(cfg.method.terms)["dkd"].curriculum.variant == "instance"


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.terms.kd.curriculum.t_end=0", "method.terms.kd.curriculum.t_end=0 is not a number > 0"),
        ("method.terms.kd.curriculum.variant=inst", "method.terms.kd.curriculum.variant=inst is not one of"),
        ("+method.terms.kd.curriculum.t_endd=3", "CurriculumTemperature takes no argument 't_endd' (closest: t_end"),
    ],
)
def test_bad_curriculum_settings_are_refused_in_one_line(override, message):
    cfg, _ = compose(["method=ctkd", override])
    cfg.paths.output_dir = "x"
    with pytest.raises(KdlabError) as e:
        validate(cfg)
    assert "\n" not in str(e.value) and message in str(e.value)


def test_ctkd_trains_end_to_end_and_checkpoints_its_temperature(train):
    r = train(["method=ctkd", "logger=csv"])
    state = torch.load(r["_dir"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["terms.kd.curriculum.global_t"].shape == (1,)
    assert state["terms.kd.curriculum.global_t"].item() != 1.0  # optimised with the student
    # the learnt temperature is logged per epoch, as the authors' log: 1 + 20 sigmoid(v), v near 1
    (metrics,) = r["_dir"].rglob("metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("train/temperature_kd")]
    assert rows and 1.0 < float(rows[0]["train/temperature_kd"]) < 21.0
