"""The offline strategy: frozen teacher, weighted terms, clear failures."""

import pytest
import torch

from kdlab.errors import KdlabError
from kdlab.methods import KD, CrossEntropy, FeatureTerm, StepOutputs
from kdlab.models import create_model
from kdlab.strategies import OfflineDistillation


def make_module(terms=None, teacher=True):
    torch.manual_seed(0)
    student = create_model("mlp", 10, (1, 40))
    t = create_model("cnn1d", 10, (1, 40)) if teacher else None
    terms = terms or {"ce": CrossEntropy(0.1), "kd": KD(0.9, temperature=4.0)}
    return OfflineDistillation(student, terms, lambda p: torch.optim.SGD(p, lr=0.1), 10, (1, 40), teacher=t)


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    module = make_module()
    module.train()
    assert module.student.training and not module.teacher.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    opt = module.configure_optimizers()
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 15210  # the student only
    out = module.training_step(batch(), 0)
    out["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())
    module.train(True)
    assert not module.teacher.training


def test_training_step_returns_named_weighted_terms():
    module = make_module()
    x, y, idx = batch()
    out = module.training_step((x, y, idx), 0)
    with torch.no_grad():
        s, t = module.student(x), module.teacher(x)
    ce = 0.1 * torch.nn.functional.cross_entropy(s, y)
    from kdlab.losses import kd_loss

    kd = 0.9 * kd_loss(s, t, 4.0)
    assert set(out) == {"loss", "loss_ce", "loss_kd"}
    torch.testing.assert_close(out["loss_ce"], ce)
    torch.testing.assert_close(out["loss_kd"], kd)
    torch.testing.assert_close(out["loss"].detach(), ce + kd)


def test_baseline_keeps_no_teacher():
    module = make_module({"ce": CrossEntropy()}, teacher=True)
    assert module.teacher is None


def test_a_teacher_term_without_teacher_fails_clearly():
    with pytest.raises(KdlabError, match=r"method terms \['kd'\] need a teacher"):
        make_module(teacher=False)


class Tapped(FeatureTerm):
    def build(self, student_feats, teacher_feats):
        self.shapes = {p: tuple(f.shape[1:]) for p, f in {**student_feats, **teacher_feats}.items()}

    def default_taps(self, student_stages, teacher_stages):
        return student_stages[-1:], teacher_stages[-1:]

    def loss(self, out: StepOutputs):
        assert set(out.student_feats) == set(self.student_taps) and set(out.teacher_feats) == set(self.teacher_taps)
        return out.student_feats[self.student_taps[0]].mean() * 0


def test_terms_get_their_taps_and_probed_shapes():
    module = make_module({"ce": CrossEntropy(), "tap": Tapped(student_taps=["blocks.0"], teacher_taps=["conv2"])})
    assert module.terms["tap"].shapes == {"blocks.0": (100,), "conv2": (25, 10)}
    assert set(module.training_step(batch(), 0)) == {"loss", "loss_ce", "loss_tap"}


def test_default_taps_come_from_the_models_declared_stages():
    module = make_module({"ce": CrossEntropy(), "tap": Tapped()})
    assert (module.terms["tap"].student_taps, module.terms["tap"].teacher_taps) == (["blocks.1"], ["conv3"])
    assert module.terms["tap"].shapes == {"blocks.1": (100,), "conv3": (25, 5)}


def test_bad_tap_path_fails_at_build_time_with_valid_paths():
    with pytest.raises(KdlabError, match=r"teacher has no module 'layer3'.*valid tap paths: conv1, conv2, conv3, head"):
        make_module({"ce": CrossEntropy(), "tap": Tapped(student_taps=["blocks.1"], teacher_taps=["layer3"])})
    with pytest.raises(KdlabError, match=r"give as many of each"):
        make_module(
            {
                "ce": CrossEntropy(),
                "tap": Tapped(student_taps=["blocks.0", "blocks.1"], teacher_taps=["conv3"]),
            }
        )


def test_nan_loss_stops_with_a_clear_error():
    module = make_module()
    with torch.no_grad():
        next(module.student.parameters()).fill_(float("nan"))
    with pytest.raises(KdlabError, match=r"non-finite loss at epoch 0.*loss_kd=nan.*lower the learning rate"):
        module.training_step(batch(), 0)
