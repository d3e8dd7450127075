"""Terms with learned connectors (``kdlab.methods.connector``): AB, FT, OFD, ReviewKD.

Taps and connectors built from probed shapes (1-D MNIST-1D nets, 2-D maps), the initialisation phases
of AB and FT (what they train, their loss), OFD's margins (from the teacher's BatchNorms, or measured
on the first batch), ReviewKD's fusion against a numpy reference, one-line refusals of models without
the maps a method needs, and one short end-to-end run of each method config.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.losses.connector import ab_loss
from kdlab.methods import CrossEntropy, StepOutputs
from kdlab.methods.base import InitPhase
from kdlab.methods.connector import AB, FT, OFD, ReviewKD
from kdlab.models import create_model
from kdlab.strategies.offline import OfflineDistillation
from tests import reference_connector as ref

NARROW = {"channels": 8}


def offline(term, student="cnn1d", teacher="cnn1d", student_kwargs=NARROW, shape=(1, 40), teacher_setup=None):
    torch.manual_seed(0)
    t = create_model(teacher, 10, shape)
    if teacher_setup is not None:
        teacher_setup(t)
    s = create_model(student, 10, shape, **(student_kwargs if student == "cnn1d" else {}))
    return OfflineDistillation(s, {"ce": CrossEntropy(), "term": term}, torch.optim.SGD, 10, shape, teacher=t)


def outputs(module, n=6, shape=(1, 40), seed=1, epoch=0) -> StepOutputs:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    out = module.step_outputs(x, y)
    out.epoch = epoch
    return out


def trained_ids(module) -> set[int]:
    return {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}


# ---------------------------------------------------------------------------------------------
# AB
# ---------------------------------------------------------------------------------------------


def test_ab_taps_connectors_and_losses():
    module = offline(AB())
    ab = module.terms["term"]
    assert ab.student_taps == ab.teacher_taps == ["conv1.0", "conv2.0", "conv3.0"]  # pre-activation stages
    # 8 -> 25 channels at equal lengths: conv of kernel 1 (1 + s - t) -> BN, no ReLU (RepDistiller's Connector)
    assert [type(m).__name__ for m in ab.connectors[0]] == ["Conv1d", "BatchNorm1d"]
    assert ab.connectors[0][0].kernel_size == (1,) and ab.connectors[0][0].out_channels == 25
    module.train()
    out = outputs(module)
    connected = [c(out.student_feats[p]) for c, p in zip(ab.connectors, ab.student_taps)]
    teacher = [out.teacher_feats[p] for p in ab.teacher_taps]
    assert ab.init_loss(out).item() == pytest.approx(ref.ab(connected, teacher, 1.0), rel=1e-5)
    assert (teacher[0] < 0).any()  # pre-activations keep their negative values
    assert module.terms["term"](out).item() == 0.0  # the main phase: cross-entropy alone
    same = offline(AB(), student_kwargs={}).terms["term"]  # a student of the teacher's shape: no connector
    assert all(isinstance(c, nn.Identity) for c in same.connectors)


def test_ab_init_phase_trains_connectors_and_student_features():
    module = offline(AB(init_epochs=30, init_lr=0.02, margin=0.5))
    ab, student = module.terms["term"], module.student
    assert ab.init_phase() == InitPhase(30, 0.02, 0.9, 5e-4)
    assert AB(init_epochs=0).init_phase() is None
    module.phase = "term"
    trained = trained_ids(module)
    assert {id(p) for p in ab.connectors.parameters()} <= trained
    assert {id(p) for m in (student.conv1, student.conv2, student.conv3) for p in m.parameters()} <= trained
    assert not trained & {id(p) for p in student.head.parameters()}
    assert not trained & {id(p) for p in module.teacher.parameters()}
    module.train()
    assert student.conv1.training and ab.connectors.training and not module.teacher.training
    losses = module.losses(*outputs_batch())
    assert list(losses.terms) == ["loss_term"] and losses.loss.item() > 0
    out = outputs(module)
    pairs = ab.pairs(out)
    expected = ab_loss([c(s) for c, (s, _) in zip(ab.connectors, pairs)], [t for _, t in pairs], 0.5)
    assert ab.init_loss(out).item() == pytest.approx(expected.item(), rel=1e-6)


def outputs_batch(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g), None


def test_ab_and_ofd_refuse_models_without_pre_activation_maps():
    for term in (AB(), OFD()):
        with pytest.raises(KdlabError, match=r"student \(MLP\) declares no pre-activation stages"):
            offline(term, student="mlp")
    with pytest.raises(KdlabError, match=r"OFD needs spatial feature maps .*'blocks.0.0' gives \(2, 100\)"):
        offline(OFD(student_taps=["blocks.0.0"], teacher_taps=["conv3.0"]), student="mlp")


# ---------------------------------------------------------------------------------------------
# FT
# ---------------------------------------------------------------------------------------------


def test_ft_paraphraser_and_translator_follow_repdistiller():
    ft = offline(FT()).terms["term"]
    assert (ft.student_taps, ft.teacher_taps) == (["conv3"], ["conv3"])  # the last stage of each (feat[-2])
    enc = [type(m).__name__ for m in ft.paraphraser.encoder]
    dec = [type(m).__name__ for m in ft.paraphraser.decoder]
    assert enc == ["Conv1d", "LeakyReLU"] * 3 and dec == ["ConvTranspose1d", "LeakyReLU"] * 3  # no BN
    convs = [
        m for m in [*ft.paraphraser.encoder, *ft.paraphraser.decoder] if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)
    ]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (25, 25),
        (25, 12),
        (12, 12),
        (12, 12),
        (12, 25),
        (25, 25),
    ]
    assert all(m.negative_slope == 0.1 for m in ft.paraphraser.encoder if isinstance(m, nn.LeakyReLU))
    assert [type(m).__name__ for m in ft.translator.encoder] == ["Conv1d", "BatchNorm1d", "LeakyReLU"] * 3
    t_convs = [m for m in ft.translator.encoder if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in t_convs] == [
        (8, 8, (3,)),
        (8, 12, (3,)),
        (12, 12, (3,)),
    ]
    ft2 = offline(FT(), student="cnn_tiny", teacher="cnn_small", shape=(1, 8, 8)).terms["term"]  # 2-D maps
    assert isinstance(ft2.paraphraser.decoder[0], nn.ConvTranspose2d) and ft2.paraphraser.encoder[2].out_channels == 32


def test_ft_init_phase_trains_the_paraphraser_to_reconstruct_the_teacher():
    module = offline(FT(init_lr=0.01))
    ft = module.terms["term"]
    assert ft.init_phase() == InitPhase(30, 0.01) and FT(init_epochs=0).init_phase() is None
    module.phase = "term"
    assert trained_ids(module) == {id(p) for p in ft.paraphraser.parameters()}
    module.train()
    assert ft.paraphraser.training and not module.student.training
    out = outputs(module)
    ft_map = out.teacher_feats["conv3"]
    rec = ft.paraphraser(ft_map)[1].detach().numpy()
    assert ft.init_loss(out).item() == pytest.approx(float(((rec - ft_map.numpy()) ** 2).mean()), rel=1e-5)
    module.phase = None
    module.train()
    assert not ft.paraphraser.training and ft.translator.training  # frozen after its phase


def test_ft_main_loss_trains_the_translator_not_the_paraphraser():
    module = offline(FT(weight=200.0))
    ft = module.terms["term"]
    module.train()
    out = outputs(module)
    loss = ft(out)
    factor_s = ft.translator(out.student_feats["conv3"])
    factor_t = ft.paraphraser.encoder(out.teacher_feats["conv3"])
    assert loss.item() == pytest.approx(200.0 * ref.ft(factor_s, factor_t), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in ft.paraphraser.parameters())
    assert all(p.grad is not None for p in ft.translator.parameters())
    assert module.student.conv3[0].weight.grad is not None


def test_ft_refuses_what_it_cannot_build():
    with pytest.raises(KdlabError, match=r"FT rate=0.01 gives no factor channel for 25 teacher channels"):
        offline(FT(rate=0.01))
    with pytest.raises(KdlabError, match="FT transfers one factor"):
        offline(FT(student_taps=["conv2", "conv3"], teacher_taps=["conv2", "conv3"]))
    with pytest.raises(KdlabError, match=r"FT needs spatial feature maps .*'blocks.1' gives \(2, 100\)"):
        offline(FT(), student="mlp")


# ---------------------------------------------------------------------------------------------
# OFD
# ---------------------------------------------------------------------------------------------


def random_bns(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.weight.data = torch.randn(m.num_features, generator=g)
            m.bias.data = 2 * torch.randn(m.num_features, generator=g)


def test_ofd_margins_from_the_teachers_batchnorms():
    module = offline(OFD(), student="cnn_tiny", teacher="cnn_small", teacher_setup=random_bns)
    ofd = module.terms["term"]
    assert ofd.student_taps == ["stages.0.1", "stages.1.1", "stages.2.1"] and ofd.teacher_taps == ofd.student_taps
    for i, margin in enumerate(ofd.margins()):
        bn = module.teacher.stages[i][1]
        np.testing.assert_allclose(margin.numpy(), ref.ofd_margin(bn.weight, bn.bias), rtol=1e-5)
    assert bool(ofd.margin_known.all())
    conv, bn = ofd.connectors[1]
    assert (type(conv).__name__, conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (
        "Conv1d",
        16,
        32,
        (1,),
        None,
    )
    assert isinstance(bn, nn.BatchNorm1d) and OFD(kernel_size=3).kernel_size == 3
    module.train()
    out = outputs(module)
    pairs = ofd.pairs(out)
    expected = ref.ofd([c(s) for c, (s, _) in zip(ofd.connectors, pairs)], [t for _, t in pairs], ofd.margins())
    assert ofd(out).item() == pytest.approx(0.001 * expected, rel=1e-5)


def test_ofd_measures_margins_on_the_first_batch_for_a_teacher_without_batchnorm():
    module = offline(OFD())  # cnn1d: conv -> ReLU, no BN before its ReLUs
    ofd = module.terms["term"]
    assert not bool(ofd.margin_known.any())
    module.train()
    first = outputs(module, n=16)
    ofd(first)
    for t, margin in zip(ofd.teacher_taps, ofd.margins()):
        f = first.teacher_feats[t].double().numpy().transpose(1, 0, 2).reshape(25, -1)  # (c, b * L)
        np.testing.assert_allclose(margin.numpy(), ref.ofd_margin(f.std(1), f.mean(1)), rtol=1e-4, atol=1e-6)
    kept = [m.clone() for m in ofd.margins()]
    ofd(outputs(module, seed=9))  # later batches keep them
    assert all(torch.equal(a, b) for a, b in zip(kept, ofd.margins()))
    state = module.state_dict()
    assert "terms.term.margin0" in state and state["terms.term.margin_known"].all()


# ---------------------------------------------------------------------------------------------
# ReviewKD
# ---------------------------------------------------------------------------------------------


def abf_params(abf) -> dict:
    def bn(m):
        return {k: getattr(m, k).detach().double().numpy() for k in ("weight", "bias")} | {
            "mean": m.running_mean.double().numpy(),
            "var": m.running_var.double().numpy(),
            "eps": m.eps,
        }

    p = {"w1": abf.conv1[0].weight.detach().double().numpy(), "bn1": bn(abf.conv1[1])}
    p |= {"w2": abf.conv2[0].weight.detach().double().numpy(), "bn2": bn(abf.conv2[1])}
    if abf.att_conv is not None:
        p |= {
            "wa": abf.att_conv[0].weight.detach().double().numpy(),
            "ba": abf.att_conv[0].bias.detach().double().numpy(),
        }
    return p


def test_reviewkd_taps_fusion_and_loss():
    module = offline(ReviewKD())
    rkd = module.terms["term"]
    assert rkd.student_taps == ["conv1", "conv2", "conv3", "pre_logits"]  # post-activation, then the pooled feature
    assert rkd.teacher_taps == ["conv1.0", "conv2.0", "conv3.0", "pre_logits"]  # pre-activation
    assert [a.att_conv is not None for a in rkd.abfs] == [True, True, True, False]  # the deepest level fuses nothing
    assert [a.conv1[0].out_channels for a in rkd.abfs] == [40] * 4  # min(512, the student's 40 pooled channels)
    assert [a.conv2[0].out_channels for a in rkd.abfs] == [25, 25, 25, 125]  # the teacher's channels
    module.eval()  # BN on running statistics, as the numpy reference
    for a in rkd.abfs:  # non-trivial BN statistics
        for bn in (a.conv1[1], a.conv2[1]):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    out = outputs(module, epoch=19)
    pairs = rkd.pairs(out)
    teacher = [t.reshape(*t.shape[:2], -1) for _, t in pairs]  # pre_logits (b, 125) as (b, 125, 1)
    student = [s.reshape(*s.shape[:2], -1).detach().double().numpy() for s, _ in pairs]
    expected = ref.review_1d(student, [t.shape[-1] for t in teacher], [abf_params(a) for a in rkd.abfs])
    got = rkd.review([s for s, _ in pairs], [t.shape[2:] for t in teacher])
    for g, e, t in zip(got, expected, teacher):
        assert g.shape == t.shape
        np.testing.assert_allclose(g.detach().numpy(), e, rtol=1e-4, atol=1e-5)
    assert rkd(out).item() == pytest.approx(5.0 * ref.hcl(expected, teacher), rel=1e-4)


def test_reviewkd_warms_up_over_its_epochs_and_works_on_2d_maps():
    module = offline(ReviewKD(weight=1.0, warmup_epochs=20), student="cnn_tiny", teacher="cnn_small", shape=(1, 8, 8))
    rkd = module.terms["term"]
    assert rkd.teacher_taps == ["stages.0.1", "stages.1.1", "stages.2.1", "pre_logits"]
    module.eval()
    full = rkd(outputs(module, shape=(1, 8, 8), epoch=19)).item()
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (100, 1.0)):
        assert rkd(outputs(module, shape=(1, 8, 8), epoch=epoch)).item() == pytest.approx(factor * full, rel=1e-5)
    flat = offline(ReviewKD(warmup_epochs=0)).eval()  # no warm-up: the full loss from the first epoch
    assert flat.terms["term"](outputs(flat, epoch=0)).item() == pytest.approx(
        flat.terms["term"](outputs(flat, epoch=50)).item(), rel=1e-6
    )


def test_reviewkd_refuses_a_student_without_feature_maps():
    with pytest.raises(KdlabError, match=r"ReviewKD needs spatial feature maps .*'blocks.0' gives \(2, 100\)"):
        offline(ReviewKD(), student="mlp")


# ---------------------------------------------------------------------------------------------
# end to end (MNIST-1D: cnn1d -> cnn1d_narrow)
# ---------------------------------------------------------------------------------------------

PAIR = ["teacher=cnn1d", "student=cnn1d_narrow"]


@pytest.mark.parametrize("method", ["ab", "ft"])
def test_methods_with_an_initialisation_phase_run_it_first(train, method):
    r = train([f"method={method}", *PAIR, f"method.terms.{method}.init_epochs=1", "logger=csv"])
    assert (r["_dir"] / f"init_{method}" / "checkpoints").is_dir()
    (metrics,) = r["_dir"].rglob("metrics.csv")
    columns = next(csv.reader(metrics.open()))
    assert f"init_{method}/train/loss_{method}" in columns and f"train/loss_{method}" in columns
    assert 0.0 <= r["student"]["test_acc"] <= 1.0


@pytest.mark.parametrize(("method", "key"), [("ofd", "terms.ofd.margin2"), ("reviewkd", "terms.reviewkd.abfs.3.")])
def test_methods_trained_with_the_student_run_end_to_end(train, method, key):
    r = train([f"method={method}", *PAIR])
    state = torch.load(r["_dir"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith(key) for k in state)
    assert not (r["_dir"] / f"init_{method}").exists()


def test_ofd_trains_with_the_teacher_in_train_mode_and_gives_it_back_unchanged():
    # mdistiller's OFD.train (and clovaai's loop) keep the teacher in train mode: batch statistics
    from kdlab.methods import KD, OFD, CrossEntropy
    from kdlab.models import create_model
    from kdlab.strategies.offline import OfflineDistillation

    torch.manual_seed(0)
    teacher, student = create_model("cnn_small", 10, (1, 40)), create_model("cnn_tiny", 10, (1, 40))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = OfflineDistillation(
        student, {"ce": CrossEntropy(), "ofd": OFD()}, torch.optim.SGD, 10, (1, 40), teacher=teacher
    )
    module.train()
    assert module.teacher.training and all(m.training for m in module.teacher.modules())
    module.losses(torch.randn(8, 1, 40), torch.arange(8) % 10, None)
    assert not torch.equal(teacher.stages[0][1].running_mean, before["stages.0.1.running_mean"])  # batch statistics ran
    module.eval()
    assert not module.teacher.training  # validation: running statistics
    module.on_fit_end()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items()) and not teacher.training

    plain = OfflineDistillation(
        create_model("cnn_tiny", 10, (1, 40)),
        {"kd": KD()},
        torch.optim.SGD,
        10,
        (1, 40),
        teacher=create_model("cnn_small", 10, (1, 40)),
    )
    plain.train()
    assert not plain.teacher.training  # every other method: the teacher in eval mode
