"""The CC, VID, FSP and NST terms (RepDistiller's ``correlation``, ``vid``, ``fsp``, ``nst``): default taps,
learnable parts built from probed shapes, their values against the pure losses, refusals, and FSP's
initialisation phase (term level and one fast end-to-end run)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.errors import KdlabError
from kdlab.losses.feature import fsp_loss, match_spatial, nst_loss, vid_loss
from kdlab.losses.relation import cc_loss
from kdlab.methods import CrossEntropy, StepOutputs
from kdlab.methods.base import InitPhase
from kdlab.methods.feature import FSP, NST, VID, fsp_stages
from kdlab.methods.relation import CC
from kdlab.models import FeatureTaps, create_model
from kdlab.strategies import OfflineDistillation

MNIST1D, DIGITS = (1, 40), (1, 8, 8)


def offline(term, student="cnn_tiny", teacher="cnn1d", shape=MNIST1D, **student_kwargs):
    torch.manual_seed(0)
    return OfflineDistillation(
        create_model(student, 10, shape, **student_kwargs),
        {"ce": CrossEntropy(), "kd": term},
        lambda p: torch.optim.SGD(p, lr=0.1),
        10,
        shape,
        teacher=create_model(teacher, 10, shape),
    )


def step(module, shape=MNIST1D, b=6) -> StepOutputs:
    x = torch.randn(b, *shape, generator=torch.Generator().manual_seed(1))
    return module.step_outputs(x, torch.arange(b) % 10)


def optimised(module) -> set[int]:
    return {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}


# --- VID -----------------------------------------------------------------------------------------


def test_vid_builds_one_regressor_per_stage_pair_on_1d_maps():
    module = offline(VID())
    vid = module.terms["kd"]
    assert (vid.student_taps, vid.teacher_taps) == (["stages.0", "stages.1", "stages.2"], ["conv1", "conv2", "conv3"])
    for reg, c_s in zip(vid.regressors, (8, 16, 32)):  # RepDistiller VIDLoss(s, t, t): teacher's 25 inside
        convs = [m for m in reg.regressor if isinstance(m, nn.Conv1d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [
            (c_s, 25, (1,), None),
            (25, 25, (1,), None),
            (25, 25, (1,), None),
        ]
        assert [type(m) for m in reg.regressor] == [nn.Conv1d, nn.ReLU, nn.Conv1d, nn.ReLU, nn.Conv1d]
        var = nn.functional.softplus(reg.log_scale) + 1e-5
        torch.testing.assert_close(var, torch.full((25,), 5.0))
    assert {id(p) for p in vid.parameters()} <= optimised(module)


def test_vid_term_value_is_the_sum_over_pairs_with_pooling_first():
    module = offline(VID(weight=2.0))
    vid, out = module.terms["kd"], step(module)
    expected = 0.0
    for reg, (fs, ft) in zip(vid.regressors, vid.pairs(out)):
        assert fs.shape[2] > ft.shape[2]  # student 40/20/10 positions, teacher 19/10/5: the student is pooled
        fs, ft = match_spatial(fs, ft)
        expected += vid_loss(reg(fs), ft, reg.log_scale).item()
    assert vid(out).item() == pytest.approx(2.0 * expected, rel=1e-6)
    vid(out).backward()
    assert all(p.grad is not None for p in vid.regressors.parameters())


def test_vid_takes_2d_maps_and_vectors():
    vid = offline(VID(), teacher="cnn_small", shape=DIGITS).terms["kd"]
    assert isinstance(vid.regressors[0].regressor[0], nn.Conv2d)
    vid = offline(VID(), student="mlp", teacher="mlp").terms["kd"]  # (b, 100) vectors: 1x1 "convs" are linear
    assert isinstance(vid.regressors[0].regressor[0], nn.Linear) and len(vid.regressors) == 2
    with pytest.raises(KdlabError, match=r"VID init_pred_var=1e-06 must exceed eps"):
        VID(init_pred_var=1e-6)
    with pytest.raises(KdlabError, match=r"VID pairs maps of one rank; student tap 'blocks.1' gives \(2, 100\)"):
        offline(VID(student_taps=["blocks.1"], teacher_taps=["conv3"]), student="mlp")


# --- NST -----------------------------------------------------------------------------------------


def test_nst_pairs_the_last_stages_and_sums_the_losses():
    module = offline(NST(weight=50.0))
    nst, out = module.terms["kd"], step(module)
    assert (nst.student_taps, nst.teacher_taps) == (["stages.0", "stages.1", "stages.2"], ["conv1", "conv2", "conv3"])
    expected = sum(nst_loss(fs, ft).item() for fs, ft in nst.pairs(out))
    assert nst(out).item() == pytest.approx(50.0 * expected, rel=1e-6)


def test_nst_refuses_vectors():
    with pytest.raises(KdlabError, match=r"^NST needs spatial feature maps .*'blocks.0' gives \(2, 100\)"):
        offline(NST(), student="mlp")


# --- CC ------------------------------------------------------------------------------------------


def test_cc_embeds_both_penultimate_features_and_trains_both_embeddings():
    module = offline(CC(weight=0.02))
    cc, out = module.terms["kd"], step(module)
    assert (cc.student_taps, cc.teacher_taps) == (["pre_logits"], ["pre_logits"])
    # cnn_tiny pools to 32 features, cnn1d flattens 25 channels x 5 positions: both to 128, no normalisation
    assert (cc.embed_s.linear.in_features, cc.embed_t.linear.in_features) == (32, 125)
    assert cc.embed_s.linear.out_features == cc.embed_t.linear.out_features == 128
    ((fs, ft),) = cc.pairs(out)
    e_s, e_t = cc.embed_s(fs), cc.embed_t(ft)
    torch.testing.assert_close(e_t, ft @ cc.embed_t.linear.weight.t() + cc.embed_t.linear.bias)
    assert cc(out).item() == pytest.approx(0.02 * cc_loss(e_s, e_t).item(), rel=1e-6)
    cc(out).backward()
    assert cc.embed_s.linear.weight.grad.abs().sum() > 0 and cc.embed_t.linear.weight.grad.abs().sum() > 0
    assert {id(p) for p in cc.parameters()} <= optimised(module)
    assert not any(id(p) in optimised(module) for p in module.teacher.parameters())


def test_cc_takes_one_pair():
    with pytest.raises(KdlabError, match=r"CC embeds one feature pair"):
        offline(CC(student_taps=["stages.1", "stages.2"], teacher_taps=["conv2", "conv3"]))


# --- FSP -----------------------------------------------------------------------------------------


def test_fsp_init_phase_modules_and_loss():
    module = offline(FSP(), student="cnn1d")  # same family and width as the teacher
    fsp, out = module.terms["kd"], step(module)
    assert fsp.init_phase() == InitPhase(epochs=30, lr=0.05, momentum=0.9, weight_decay=5e-4)
    assert FSP(init_epochs=2, init_lr=0.01).init_phase() == InitPhase(2, 0.01, 0.9, 5e-4)
    student = module.student
    mods = fsp.init_modules(student)
    assert mods == [student.conv1, student.conv2, student.conv3]  # every child but the classifier
    assert all(m is not student.get_classifier() for m in mods)
    assert (fsp.student_taps, fsp.teacher_taps) == (["conv1", "conv2", "conv3"], ["conv1", "conv2", "conv3"])
    s = [out.student_feats[p] for p in fsp.student_taps]
    t = [out.teacher_feats[p] for p in fsp.teacher_taps]
    init = fsp.init_loss(out)
    assert init.item() == pytest.approx(fsp_loss(s, t).item(), rel=1e-6) and init.item() > 0

    # hand check of the first pair: 19 positions pooled to 10, G = bottom @ top^T / 10, mean squared difference
    def gram(a, b):
        a, b = match_spatial(a, b)
        return torch.einsum("bip,bjp->bij", a, b) / a.shape[2]

    by_hand = sum((gram(s[i], s[i + 1]) - gram(t[i], t[i + 1])).pow(2).mean() for i in range(2))
    assert init.item() == pytest.approx(by_hand.item(), rel=1e-5)
    init.backward()
    assert student.conv1[0].weight.grad.abs().sum() > 0 and student.head.weight.grad is None
    # the main phase: RepDistiller's loss_kd = 0, whatever the weight
    assert fsp(out).item() == 0.0
    # the init phase optimises the student's feature modules only, with the phase's SGD
    module.phase = "kd"
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for m in mods for p in m.parameters()}


def test_fsp_refuses_maps_of_other_channels_and_vectors():
    with pytest.raises(KdlabError, match=r"^FSP needs student and teacher maps of the same channels.*\[8, 16, 32\]"):
        offline(FSP())
    with pytest.raises(KdlabError, match=r"^FSP needs spatial feature maps"):
        offline(FSP(), student="mlp", teacher="mlp")
    with pytest.raises(KdlabError, match=r"^FSP pairs consecutive maps"):
        offline(FSP(student_taps=["conv3"], teacher_taps=["conv3"]), student="cnn1d")
    with pytest.raises(KdlabError, match=r"init_epochs=-1 is not an integer >= 0"):
        FSP(init_epochs=-1)


@pytest.mark.parametrize(
    "arch,expected,f0",
    [  # RepDistiller's feat[:-1] and its f0 (models/*.py forward(is_feat=True))
        ("resnet8x4", ["layer1:input", "layer1", "layer2", "layer3"], lambda m, x: m.relu(m.bn1(m.conv1(x)))),
        ("wrn_16_2", ["block1:input", "block1", "block2", "block3"], lambda m, x: m.conv1(x)),
        ("vgg8_cifar", ["block0", "block1", "block2", "block3", "block4"], lambda m, x: torch.relu(m.block0(x))),
        ("mobilenetv2", ["conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6"], lambda m, x: m.conv1(x)),
        ("shufflenetv1", ["layer1:input", "layer1", "layer2", "layer3"], lambda m, x: torch.relu(m.bn1(m.conv1(x)))),
        ("cnn1d", ["conv1", "conv2", "conv3"], None),  # no stem: the first stage is the first layer
    ],
)
def test_fsp_taps_are_repdistillers_feats_but_the_last(arch, expected, f0):
    shape = MNIST1D if arch == "cnn1d" else (3, 32, 32)
    model = create_model(arch, 10, shape).eval()
    assert fsp_stages(model) == expected
    if f0 is not None:
        taps = FeatureTaps(model, expected[:1])
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            model(x)
            torch.testing.assert_close(taps.pop()[expected[0]], f0(model, x))


def test_fsp_on_a_cifar_pair_of_one_family():
    module = offline(FSP(), student="resnet8x4", teacher="resnet32x4", shape=(3, 16, 16))
    fsp, out = module.terms["kd"], step(module, shape=(3, 16, 16), b=2)
    assert fsp.student_taps == fsp.teacher_taps == ["layer1:input", "layer1", "layer2", "layer3"]
    s = [out.student_feats[p] for p in fsp.student_taps]
    assert [f.shape[1] for f in s] == [32, 64, 128, 256]
    assert torch.isfinite(fsp.init_loss(out)) and fsp.init_loss(out).item() > 0


def test_fsp_runs_its_init_phase_end_to_end(train):
    overrides = ["method=fsp", "teacher=cnn1d", "student=cnn1d_narrow", "student.kwargs.channels=25"]
    r = train([*overrides, "method.terms.fsp.init_epochs=1"])
    assert r["method"] == "fsp" and r["student"]["arch"] == "cnn1d" and 0.0 <= r["student"]["test_acc"] <= 1.0
    assert (r["_dir"] / "init_fsp" / "checkpoints").is_dir()
    assert math.isfinite(r["student"]["test_acc"])
    with pytest.raises(KdlabError, match=r"FSP needs student and teacher maps of the same channels"):
        train([*overrides[:3], "method.terms.fsp.init_epochs=1"])  # 8 channels against the teacher's 25


def test_cc_kernel_option_selects_the_papers_correlation_matrices(train):
    from kdlab.losses import cc_kernel_loss, cc_loss
    from kdlab.methods import CC
    from kdlab.methods.base import StepOutputs

    s, t = torch.randn(6, 10), torch.randn(6, 12)
    for kernel, loss in ((None, cc_loss), ("gaussian", lambda a, b: cc_kernel_loss(a, b, 0.3, 3))):
        term = CC(weight=2.0, feat_dim=4, kernel=kernel, gamma=0.3, max_p=3)
        term.student_taps, term.teacher_taps = ["pre_logits"], ["pre_logits"]
        term.build({"pre_logits": s}, {"pre_logits": t})
        out = StepOutputs(torch.zeros(6, 3), torch.zeros(6, dtype=torch.long))
        out.student_feats, out.teacher_feats = {"pre_logits": s}, {"pre_logits": t}
        expected = 2.0 * loss(term.embed_s(s), term.embed_t(t))
        assert torch.allclose(term(out), expected)
    r = train(["method=cc", "method.terms.cc.kernel=gaussian", "teacher=cnn1d", "student=cnn1d_narrow"])
    assert 0.0 <= r["student"]["test_acc"] <= 1.0
    with pytest.raises(KdlabError, match="kernel"):
        train(["method=cc", "method.terms.cc.kernel=rbf"])
