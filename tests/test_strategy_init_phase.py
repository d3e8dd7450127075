"""A term's initialisation phase (RepDistiller's ``init`` for AB, FT, FSP), as a general mechanism:
any term may declare one; the offline strategy trains it as a fit of its own before the student's."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from kdlab.config import NonNegativeInt
from kdlab.errors import KdlabError
from kdlab.methods import CrossEntropy, Term
from kdlab.methods.base import InitPhase, feature_modules
from kdlab.models import create_model
from kdlab.strategies.offline import OfflineDistillation

PULL = "tests.test_strategy_init_phase.Pull"


class Pull(Term):
    """Its phase pulls a scalar towards 3 (the student's logits enter with weight 0, so the student
    is in the graph but must not move); in the main phase it contributes nothing."""

    def __init__(self, weight: float = 1.0, init_epochs: NonNegativeInt = 2, train_student: bool = False):
        super().__init__(weight)
        self.init_epochs, self.train_student = init_epochs, train_student
        self.value = nn.Parameter(torch.zeros(()))

    def init_phase(self):
        return InitPhase(self.init_epochs, lr=0.05) if self.init_epochs else None

    def init_modules(self, student):
        return [self, *feature_modules(student)] if self.train_student else [self]

    def init_loss(self, out):
        return (self.value - 3.0) ** 2 + 0.0 * out.student_logits.sum()

    def loss(self, out):
        return 0.0 * out.student_logits.sum()


def test_the_phase_trains_what_the_term_names_and_nothing_else():
    student, teacher = create_model("cnn_tiny", 10, (1, 40)), create_model("cnn_tiny", 10, (1, 40))
    terms = {"ce": CrossEntropy(), "pull": Pull(train_student=False)}
    module = OfflineDistillation(student, terms, torch.optim.Adam, 10, (1, 40), teacher=teacher)
    module.phase = "pull"
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    assert [p for g in opt.param_groups for p in g["params"]] == [terms["pull"].value]
    module.train()  # only what the phase trains is in train mode (the student's BN statistics stay)
    assert not student.training and not any(m.training for m in student.modules()) and terms["pull"].training
    assert not module.teacher.training
    loss = module.losses(torch.randn(4, 1, 40), torch.tensor([0, 1, 2, 3]), None)
    assert list(loss.terms) == ["loss_pull"] and loss.loss.item() == pytest.approx(9.0)

    terms["pull"].train_student = True  # AB and FSP train the student's feature modules too
    opt = module.configure_optimizers()
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(terms["pull"].value) in trained
    assert trained >= {id(p) for p in student.stages.parameters()}
    assert not trained & {id(p) for p in student.head.parameters()}  # not the classifier
    module.train()
    assert student.stages.training and not student.head.training

    module.phase = None  # the main phase: the student and every term, with the preset's optimizer
    opt = module.configure_optimizers()
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert isinstance(opt, torch.optim.Adam) and trained == {id(p) for p in module.parameters() if p.requires_grad}
    assert id(terms["pull"].value) in trained and not trained & {id(p) for p in teacher.parameters()}


def test_an_offline_run_fits_the_phase_first_logged_and_checkpointed(train):
    r = train(["logger=csv", f"+method.terms.pull._target_={PULL}", "trainer.log_every_n_steps=1"])
    phase_dir = r["_dir"] / "init_pull"
    assert (phase_dir / "checkpoints" / "last.ckpt").is_file()  # checkpointed like any other fit
    state = torch.load(phase_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert abs(state["terms.pull.value"].item() - 3.0) < 1.5  # from 0, 2 epochs x 3 batches of SGD towards 3
    (metrics,) = r["_dir"].rglob("metrics.csv")
    columns = next(csv.reader(metrics.open()))
    assert "init_pull/train/loss_pull" in columns and "init_pull/val/acc" in columns  # logged under its name
    assert "train/loss_pull" in columns and "val/acc" in columns  # then the student's own fit
    assert r["student"]["val_acc_best"] is not None


def test_a_phase_of_zero_epochs_is_skipped(train):
    r = train([f"+method.terms.pull._target_={PULL}", "+method.terms.pull.init_epochs=0"])
    assert not (r["_dir"] / "init_pull").exists()


@pytest.mark.parametrize("strategy", ["online", "self"])
def test_strategies_that_cannot_run_a_phase_refuse_it_in_one_line(train, strategy):
    with pytest.raises(
        KdlabError, match=rf"method.terms.pull \(Pull\) trains an initialisation phase.*strategy={strategy}"
    ):
        train([f"strategy={strategy}", "method=kd", f"+method.terms.pull._target_={PULL}", "student=cnn_tiny"])
