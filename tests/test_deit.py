"""DeiT (Touvron et al., ICML 2021): the distillation-token loss against DeiT's DistillationLoss,
small ViT / DeiT builds, their feature stages and token sequences, the terms that take or refuse
them, the refusal of a student without a distillation token, and the digits recipe end to end."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.methods import AT, SP, CrossEntropy, FitNet, StepOutputs
from kdlab.methods.deit import DistillationToken, deit_distillation_loss, require_distillation_token
from kdlab.methods.feature import NST
from kdlab.models import PRE_LOGITS, FeatureTaps, create_model, feature_stages
from kdlab.models.vit import WarmupCosine, default_patch_size, is_token_sequence

NANO = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)  # conf/student/deit_nano_distilled.yaml


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# The loss: an independent float64 re-statement of facebookresearch/deit losses.py DistillationLoss
# ---------------------------------------------------------------------------------------------


def _log_softmax64(z: torch.Tensor) -> torch.Tensor:
    m = z.max(dim=1, keepdim=True).values
    return z - m - torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))


def reference_deit(outputs, outputs_kd, teacher, labels, kind, alpha, tau):
    """DistillationLoss.forward with base_criterion = CrossEntropyLoss, written out by hand:
    (1 - alpha) CE(class head, labels) + alpha distillation(dist head, teacher)."""
    b = outputs.shape[0]
    base = -_log_softmax64(outputs)[torch.arange(b), labels].mean()
    if kind == "soft":
        log_p, log_q = _log_softmax64(outputs_kd / tau), _log_softmax64(teacher / tau)
        # KL summed over all elements, * T * T / outputs_kd.numel() (b * c: DeiT's legacy quirk)
        distill = (torch.exp(log_q) * (log_q - log_p)).sum() * (tau * tau) / (outputs_kd.shape[0] * outputs_kd.shape[1])
    else:
        hard = torch.tensor([int(max(range(teacher.shape[1]), key=lambda j: teacher[i, j].item())) for i in range(b)])
        distill = -_log_softmax64(outputs_kd)[torch.arange(b), hard].mean()
    return base * (1 - alpha) + distill * alpha


def kdlab_deit(outputs, outputs_kd, teacher, labels, kind, alpha, tau):
    """The same through kdlab's terms, as conf/method/deit.yaml sets them (without label smoothing)."""
    terms = [CrossEntropy(weight=1 - alpha), DistillationToken(weight=alpha, kind=kind, temperature=tau)]
    out = StepOutputs(outputs, labels, teacher_logits=teacher, student_dist_logits=outputs_kd)
    return sum(t(out) for t in terms)


def test_hand_built_case():
    # one sample, two classes: student dist head (0, 0), teacher (ln 3, 0) -> q = (3/4, 1/4), p = (1/2, 1/2)
    s, t = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert deit_distillation_loss(s, t, "soft", 1.0).item() == pytest.approx(kl / 2, rel=1e-12)  # / numel = 2
    assert deit_distillation_loss(s, t, "hard", 1.0).item() == pytest.approx(math.log(2.0), rel=1e-12)


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_loss_and_gradients_match_deit(kind, tau):
    g = torch.Generator().manual_seed(0)
    b, c, alpha = 6, 7, 0.3
    outputs = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    outputs_kd = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(b, c, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, c, (b,), generator=g)
    grads = []
    for f in (reference_deit, kdlab_deit):
        o, okd = outputs.clone().requires_grad_(), outputs_kd.clone().requires_grad_()
        loss = f(o, okd, teacher, labels, kind, alpha, tau)
        grads.append((loss.detach(), *torch.autograd.grad(loss, (o, okd))))
    for ref, ours in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    # float32 within float32 rounding of the float64 value
    ours32 = kdlab_deit(outputs.float(), outputs_kd.float(), teacher.float(), labels, kind, alpha, tau)
    assert ours32.item() == pytest.approx(grads[0][0].item(), rel=1e-5)


def test_soft_loss_divides_by_numel_not_batch():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    hinton = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), reduction="batchmean", log_target=True)
    assert deit_distillation_loss(s, t, "soft", 1.0).item() == pytest.approx(hinton.item() / 10, rel=1e-5)


def test_term_reads_the_distillation_head_and_refuses_a_step_without_it():
    g = torch.Generator().manual_seed(2)
    cls, dist, teacher = (torch.randn(4, 5, generator=g) for _ in range(3))
    term = DistillationToken()  # DeiT's defaults: alpha 0.5, hard, tau 1
    assert (term.weight, term.kind, term.temperature, term.distillation_token) == (0.5, "hard", 1.0, True)
    out = StepOutputs(cls, torch.zeros(4, dtype=torch.long), teacher_logits=teacher, student_dist_logits=dist)
    expected = 0.5 * torch.nn.functional.cross_entropy(dist, teacher.argmax(1))
    torch.testing.assert_close(term(out), expected)
    out.student_dist_logits = None
    with pytest.raises(KdlabError, match="distillation-token logits") as e:
        term(out)
    one_line(e)
    with pytest.raises(KdlabError):
        DistillationToken(kind="medium")


# ---------------------------------------------------------------------------------------------
# Small ViTs: img_size / patch_size from the data, feature stages, token sequences
# ---------------------------------------------------------------------------------------------


def test_default_patch_sizes():
    assert [default_patch_size((s, s)) for s in (8, 16, 28, 32, 64, 96, 224)] == [2, 2, 4, 4, 4, 8, 16]
    assert default_patch_size((30, 30)) == 3  # the largest divisor below 4
    assert default_patch_size((7, 7)) == 1


@pytest.mark.parametrize(
    ("arch", "shape", "kwargs", "patch", "tokens"),
    [
        ("vit_tiny_patch16_224", (3, 32, 32), {"depth": 2, "embed_dim": 48}, 4, 1 + 64),
        ("deit_tiny_patch16_224", (3, 32, 32), {"depth": 2, "embed_dim": 48, "patch_size": 8}, 8, 1 + 16),
        ("deit_tiny_distilled_patch16_224", (1, 8, 8), NANO, 2, 2 + 16),
    ],
)
def test_small_vit_builds_and_its_blocks_are_feature_stages(arch, shape, kwargs, patch, tokens):
    torch.manual_seed(0)
    model = create_model(arch, 10, shape, **kwargs)
    assert model.patch_embed.img_size == shape[1:] and model.patch_embed.patch_size == (patch, patch)
    stages = feature_stages(model, "student")
    assert stages == [f"blocks.{i}" for i in range(kwargs["depth"])]
    taps = FeatureTaps(model, [*stages, PRE_LOGITS])
    model.eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    feats = taps.pop()
    d = kwargs["embed_dim"]
    for s in stages:
        assert feats[s].shape == (2, tokens, d) and is_token_sequence(feats[s])
    assert feats[PRE_LOGITS].shape == (2, d) and not is_token_sequence(feats[PRE_LOGITS])


def test_distilled_pre_logits_is_timms_mean_of_both_tokens():
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", 10, (1, 8, 8), **NANO).eval()
    taps = FeatureTaps(model, [PRE_LOGITS])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        model(x)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(taps.pop()[PRE_LOGITS], expected)


def test_imagenet_size_vit_is_built_as_timm_builds_it():
    model = create_model("deit_tiny_patch16_224", 10, (3, 224, 224), depth=1)
    assert model.patch_embed.img_size == (224, 224) and model.patch_embed.patch_size == (16, 16)


def test_cnn_maps_are_no_token_sequences():
    model = create_model("cnn_tiny", 10, (1, 40)).eval()
    stages = feature_stages(model)
    taps = FeatureTaps(model, stages)
    model(torch.randn(2, 1, 40))
    assert all(f.dim() == 3 and not is_token_sequence(f) for f in taps.pop().values())


# ---------------------------------------------------------------------------------------------
# Terms on token sequences
# ---------------------------------------------------------------------------------------------


def nano_feats(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create_model("deit_tiny_distilled_patch16_224", 10, (1, 8, 8), **NANO).eval()
    taps = FeatureTaps(model, ["blocks.0", "blocks.1"])
    model(torch.randn(4, 1, 8, 8))
    return taps.pop()


def test_token_sequences_are_taken_by_fitnet_and_sp():
    s, t = nano_feats(0), nano_feats(1)
    fit = FitNet(student_taps=["blocks.1"], teacher_taps=["blocks.1"])
    fit.build(s, t)
    assert isinstance(fit.regressors[0], torch.nn.Linear) and fit.regressors[0].in_features == 32  # on d
    out = StepOutputs(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long), student_feats=s, teacher_feats=t)
    assert torch.isfinite(fit(out)) and fit(out) > 0
    sp = SP(student_taps=["blocks.1"], teacher_taps=["blocks.0"])
    sp.build(s, t)
    assert torch.isfinite(sp(out))


@pytest.mark.parametrize("term", [AT, NST])
def test_token_sequences_are_refused_in_one_line_naming_the_terms_that_take_them(term):
    s, t = nano_feats(0), nano_feats(1)
    t_ = term(student_taps=["blocks.1"], teacher_taps=["blocks.1"])
    with pytest.raises(KdlabError, match=r"token sequence \(b, n, d\).*FitNet, SP, PKT, RKD, CC, CRD") as e:
        t_.build(s, t)
    assert term.__name__ in one_line(e)


# ---------------------------------------------------------------------------------------------
# The distillation token is required
# ---------------------------------------------------------------------------------------------


def test_a_student_without_a_distillation_token_is_refused():
    vit = create_model("vit_tiny_patch16_224", 10, (1, 8, 8), depth=1, embed_dim=16, num_heads=2)
    with pytest.raises(KdlabError, match=r"student .* no distillation token.*deit_tiny_distilled_patch16_224") as e:
        require_distillation_token(vit, "student")
    one_line(e)
    with pytest.raises(KdlabError, match="no distillation token"):
        require_distillation_token(create_model("cnn_tiny", 10, (1, 8, 8)), "student")
    require_distillation_token(create_model("deit_tiny_distilled_patch16_224", 10, (1, 8, 8), **NANO), "student")


def test_warmup_cosine_is_timms_cosine_schedule_per_epoch():
    from timm.scheduler import CosineLRScheduler

    lr, epochs = 5e-4, 30
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    timm_sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=5e-6, warmup_t=4, warmup_lr_init=5e-7)
    timm_lrs = []
    for epoch in range(epochs):
        timm_lrs.append(opt.param_groups[0]["lr"])
        timm_sched.step(epoch + 1)
    ours = WarmupCosine(epochs, warmup=4, warmup_factor=0.001, min_factor=0.01)
    assert [lr * ours(e) for e in range(epochs)] == pytest.approx(timm_lrs, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# The digits recipe end to end
# ---------------------------------------------------------------------------------------------


def test_digits_recipe_runs_end_to_end(train):
    """The whole recipe (teacher 10 epochs, DeiT student 15): the distillation token trains, and the
    student, evaluated as DeiT evaluates (the mean of its two heads), learns far beyond chance."""
    r = train(["experiments=digits/deit_cnn_small_deit_nano_distilled", "logger=none"], fast=False)
    assert r["method"] == "deit" and r["data"] == "digits"
    assert r["student"]["arch"] == "deit_tiny_distilled_patch16_224" and r["teacher"]["arch"] == "cnn_small"
    assert r["student"]["test_acc"] > 0.5  # chance: 0.1


def test_a_plain_vit_teaches_a_cnn_and_a_cnn_teaches_a_plain_vit(train):
    """Plain timm ViTs (no distillation token) are ordinary models for the logit methods, on either side."""
    vit = ["+{role}.kwargs.depth=1", "+{role}.kwargs.embed_dim=16", "+{role}.kwargs.num_heads=2"]
    r = train(
        [
            "data=digits",
            "teacher=cnn_small",
            "teacher.arch=vit_tiny_patch16_224",
            *[v.format(role="teacher") for v in vit],
            "student=cnn_tiny",
        ]
    )
    assert r["teacher"]["arch"] == "vit_tiny_patch16_224" and 0.0 <= r["student"]["test_acc"] <= 1.0
    r = train(
        [
            "data=digits",
            "teacher=cnn_small",
            "student=cnn_tiny",
            "student.arch=vit_tiny_patch16_224",
            *[v.format(role="student") for v in vit],
            "method=dkd",
        ]
    )
    assert r["student"]["arch"] == "vit_tiny_patch16_224" and r["method"] == "dkd"


def test_fitnet_refuses_a_dense_regressor_from_tokens_onto_a_large_map():
    """DeiT-Tiny's tokens (66 x 192) onto resnet32x4's last map (256 x 8 x 8) would take a
    207-million-weight dense layer: refused in one line naming taps that pair."""
    from kdlab.methods.feature import regressor

    with pytest.raises(KdlabError, match=r"dense layer of 207,618,048 weights; .*student_taps=\[pre_logits\]"):
        regressor((66, 192), (256, 8, 8), tokens=True)
    assert isinstance(regressor((66, 192), (66, 384), tokens=True), torch.nn.Linear)  # token by token
