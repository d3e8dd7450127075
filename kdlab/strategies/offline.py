"""Offline distillation: a frozen, pretrained teacher teaches a student from scratch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.distill import StepOutputs, Term
from kdlab.errors import KdlabError
from kdlab.models import FeatureTaps
from kdlab.strategies.base import RunningMeans, check_finite, lightning_optimization, prepare_terms, probe


class OfflineDistillation(pl.LightningModule):
    """Trains ``student`` on the weighted sum of ``terms``; ``teacher`` is frozen.

    The teacher gets ``requires_grad_(False)`` and stays in eval mode whenever the module is
    put in train mode. When no term needs a teacher (``distill=none``) this is plain
    supervised training and no teacher is kept. Learnable parts of the terms (regressors,
    embeddings) are optimised with the student and saved in its checkpoints.

    Logged once per epoch: ``train/loss`` and every weighted term as ``train/loss_<name>``,
    ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best`` (each after ``log_prefix``).
    """

    name = "offline"

    def __init__(
        self,
        student: nn.Module,
        terms: Mapping[str, Term],
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        input_shape: Sequence[int],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        teacher: nn.Module | None = None,
        log_prefix: str = "",
    ):
        super().__init__()
        if not terms:
            raise KdlabError(
                "distill.terms is empty; give at least one loss term (e.g. distill=none for cross-entropy)"
            )
        needs_teacher = [name for name, t in terms.items() if t.needs_teacher]
        if needs_teacher and teacher is None:
            raise KdlabError(f"distill terms {needs_teacher} need a teacher, but none was given")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval() if needs_teacher else None
        self.terms = nn.ModuleDict(dict(terms))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        for term in self.terms.values():
            term.select_taps(self.student, self.teacher)
        self.student_taps = FeatureTaps(student, [p for t in terms.values() for p in t.student_taps], "student")
        self.teacher_taps = (
            FeatureTaps(self.teacher, [p for t in terms.values() for p in t.teacher_taps], "teacher")
            if self.teacher is not None
            else None
        )
        self._probe_and_build(input_shape)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()
        self.train_means, self.val_means = RunningMeans(), RunningMeans()
        self.log_prefix = log_prefix  # e.g. "gen1/" for a Born-Again generation: gen1/val/acc

    def _probe_and_build(self, input_shape: Sequence[int]) -> None:
        """One forward pass on a dummy batch gives the tapped shapes the terms build from."""
        _, s_feats = probe(self.student, self.student_taps, input_shape)
        t_feats = probe(self.teacher, self.teacher_taps, input_shape)[1] if self.teacher is not None else {}
        for term in self.terms.values():
            term.build(s_feats, t_feats)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            prepare_terms(self.trainer, self.terms.values())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def step_outputs(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> StepOutputs:
        """Student forward (with grad) and teacher forward (without), with their taps."""
        logits = self.student(x)
        out = StepOutputs(logits, y, student_feats=self.student_taps.pop(), index=index, epoch=self.current_epoch)
        if self.teacher is not None:
            with torch.no_grad():
                out.teacher_logits = self.teacher(x)
            out.teacher_feats = self.teacher_taps.pop()
        return out

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x, y, *rest = batch  # (x, y, index) from kdlab data modules
        out = self.step_outputs(x, y, rest[0] if rest else None)
        losses = {f"loss_{name}": term(out) for name, term in self.terms.items()}
        loss = torch.stack(list(losses.values())).sum()
        check_finite(loss, losses, self.current_epoch, self.global_step)
        self.train_means.add({"loss": loss, **losses}, len(y))
        self.train_acc.update(out.student_logits.detach(), y)
        return {"loss": loss, **{k: v.detach() for k, v in losses.items()}}

    def on_train_epoch_end(self) -> None:
        p = self.log_prefix
        self.log_dict({f"{p}train/{k}": v for k, v in self.train_means.pop().items()}, sync_dist=True)
        self.log(f"{p}train/acc", self.train_acc.compute(), sync_dist=True)  # same on every rank
        self.train_acc.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        self.student_taps.pop()
        self.val_means.add({"loss": F.cross_entropy(logits, y)}, len(y))
        self.val_acc.update(logits, y)

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.val_acc.reset()
        p = self.log_prefix
        self.log_dict({f"{p}val/{k}": v for k, v in self.val_means.pop().items()}, sync_dist=True)
        self.log(f"{p}val/acc", acc, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_acc_best(acc)
            self.log(f"{p}val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def configure_optimizers(self):
        # the student and the terms' learnable parts; the frozen teacher has none to give
        return lightning_optimization(self.parameters(), self.optimizer_factory, self.scheduler_factory)
