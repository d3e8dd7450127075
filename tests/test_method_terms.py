"""Method terms: learnable parts built from probed shapes, warm-up, memory bank, teacher ensembles."""

import math

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.losses import dkd_loss
from kdlab.methods import AT, CRD, DKD, KD, CrossEntropy, FitNet, StepOutputs
from kdlab.methods.feature import regressor
from kdlab.models import create_model
from kdlab.models.ensemble import TeacherEnsemble
from kdlab.strategies import OfflineDistillation


@pytest.mark.parametrize(
    ("s", "t", "kind"),
    [
        ((16, 20), (25, 10), "Conv1d"),  # student map twice as long: stride-2 conv
        ((16, 10), (25, 20), "ConvTranspose1d"),  # half as long: transposed conv
        ((16, 12), (25, 10), "Conv1d"),  # longer: valid conv of kernel 3
        ((8, 8, 8), (16, 4, 4), "Conv2d"),
        ((8, 4, 4), (16, 4, 4), "Conv2d"),
        ((100,), (25, 10), "Linear"),  # a vector: flattened linear map
    ],
)
def test_fitnet_regressor_maps_student_shape_to_teacher_shape(s, t, kind):
    reg = regressor(s, t)
    assert type(reg[0]).__name__ == kind or type(reg[1]).__name__ == kind
    assert reg(torch.randn(3, *s)).shape == (3, *t)


def test_fitnet_regressor_refuses_shapes_it_cannot_map():
    with pytest.raises(KdlabError, match=r"FitNet cannot map student features \(16, 5\) to teacher features \(25, 8\)"):
        regressor((16, 5), (25, 8))


def offline(terms, student="cnn_tiny", teacher="cnn1d"):
    torch.manual_seed(0)
    return OfflineDistillation(
        create_model(student, 10, (1, 40)),
        terms,
        lambda p: torch.optim.SGD(p, lr=0.1),
        10,
        (1, 40),
        teacher=create_model(teacher, 10, (1, 40)),
    )


def test_learnable_parts_are_optimised_with_the_student():
    module = offline({"ce": CrossEntropy(), "fitnet": FitNet(hint_stage=1)})
    fit = module.terms["fitnet"]
    assert (fit.student_taps, fit.teacher_taps) == (["stages.1"], ["conv2"])
    reg_params = {id(p) for p in fit.regressors.parameters()}
    opt_params = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert reg_params and reg_params <= opt_params
    assert not any(id(p) in opt_params for p in module.teacher.parameters())


def test_at_pairs_the_last_stages():
    module = offline({"ce": CrossEntropy(), "at": AT()}, teacher="cnn_small")
    assert module.terms["at"].student_taps == ["stages.0", "stages.1", "stages.2"]
    assert module.terms["at"].teacher_taps == ["stages.0", "stages.1", "stages.2"]
    module = offline({"ce": CrossEntropy(), "at": AT(student_taps=["stages.2"], teacher_taps=["conv3"])})
    assert module.terms["at"].teacher_taps == ["conv3"]


def test_dkd_warms_up_linearly():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    term = DKD(weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    for epoch, factor in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)):
        out = StepOutputs(s, y, teacher_logits=t, epoch=epoch)
        assert term(out).item() == pytest.approx(factor * full.item(), rel=1e-6)


def make_crd(n=40, k=8, classes=4):
    term = CRD(weight=1.0, feat_dim=6, nce_k=k)
    term.student_taps, term.teacher_taps = ["s"], ["t"]
    term.build({"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 7)})
    targets = torch.arange(n) % classes
    term.prepare(targets)
    return term, targets


def test_crd_negatives_come_from_other_classes():
    term, targets = make_crd(n=40, k=50, classes=4)
    index = torch.tensor([0, 5, 10])
    sample = term.negatives(index, targets[index])
    assert sample.shape == (3, 51) and torch.equal(sample[:, 0], index)
    assert (targets[sample[:, 1:]] != targets[index][:, None]).all()


def test_crd_memory_moves_towards_the_embeddings_and_stays_normalised():
    torch.manual_seed(0)
    term, targets = make_crd()
    index = torch.tensor([3, 7])
    before = term.memory.memory_s[index].clone()
    out = StepOutputs(
        torch.zeros(2, 4),
        targets[index],
        student_feats={"s": torch.randn(2, 5)},
        teacher_feats={"t": torch.randn(2, 7)},
        index=index,
    )
    loss = term(out)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert term.embed_s.linear.weight.grad.abs().sum() > 0 and term.embed_t.linear.weight.grad.abs().sum() > 0
    term.memory._apply_pending_update()  # the next step's forward applies the move
    after = term.memory.memory_s[index]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after.norm(dim=1), torch.ones(2))
    z = term.memory.z.clone()
    assert (z > 0).all()
    term(out)
    assert torch.equal(term.memory.z, z)  # the normalisation constant is fixed after the first batch


def test_crd_needs_sample_indices():
    term, targets = make_crd()
    out = StepOutputs(
        torch.zeros(2, 4), targets[:2], student_feats={"s": torch.randn(2, 5)}, teacher_feats={"t": torch.randn(2, 7)}
    )
    with pytest.raises(KdlabError, match="sample indices"):
        term(out)


class Constant(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_teacher_ensemble_averages_distributions_or_logits():
    a, b = [2.0, 0.0, 0.0], [0.0, 0.0, math.log(4.0)]
    x = torch.zeros(2, 1)
    probs = TeacherEnsemble([Constant(a), Constant(b)], weights=[3, 1]).forward(x)
    expected = 0.75 * torch.softmax(torch.tensor(a), -1) + 0.25 * torch.softmax(torch.tensor(b), -1)
    torch.testing.assert_close(torch.softmax(probs, -1)[0], expected)
    logits = TeacherEnsemble([Constant(a), Constant(b)], combine="logits").forward(x)
    torch.testing.assert_close(logits[0], (torch.tensor(a) + torch.tensor(b)) / 2)
    # KD against the ensemble = KD against the averaged distribution
    s = torch.randn(2, 3)
    kd = KD(1.0, temperature=1.0)(StepOutputs(s, torch.zeros(2, dtype=torch.long), teacher_logits=probs))
    ref = torch.nn.functional.kl_div(torch.log_softmax(s, -1), expected.expand(2, -1), reduction="batchmean")
    assert kd.item() == pytest.approx(ref.item(), rel=1e-5)


def test_teacher_ensemble_bad_settings_fail_clearly():
    with pytest.raises(KdlabError, match="at least 2 members"):
        TeacherEnsemble([Constant([0.0, 1.0])])
    with pytest.raises(KdlabError, match="give 2 non-negative numbers"):
        TeacherEnsemble([Constant([0.0, 1.0]), Constant([1.0, 0.0])], weights=[1, -1])
    with pytest.raises(KdlabError, match="use probs or logits"):
        TeacherEnsemble([Constant([0.0, 1.0]), Constant([1.0, 0.0])], combine="median")


def test_crd_scores_equal_the_reference_gather_formulation():
    torch.manual_seed(1)
    term, targets = make_crd(n=30, k=6)
    memory = term.memory
    v_s, v_t = (
        torch.nn.functional.normalize(torch.randn(4, 6), dim=1),
        torch.nn.functional.normalize(torch.randn(4, 6), dim=1),
    )
    index = torch.tensor([1, 2, 3, 4])
    sample = term.negatives(index, targets[index])
    ref_s = torch.exp(torch.bmm(memory.memory_t[sample], v_s.unsqueeze(2)).squeeze(2) / memory.nce_t)
    ref_t = torch.exp(torch.bmm(memory.memory_s[sample], v_t.unsqueeze(2)).squeeze(2) / memory.nce_t)
    s, t = memory(v_s, v_t, index, sample)
    torch.testing.assert_close(s * memory.z[0], ref_s)
    torch.testing.assert_close(t * memory.z[1], ref_t)
