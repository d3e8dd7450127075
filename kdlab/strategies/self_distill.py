"""Self-distillation: the student teaches itself, its deepest classifier teaching classifiers
attached to its intermediate stages (Be Your Own Teacher)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.distill import FeatureTerm, StepOutputs, Term
from kdlab.errors import KdlabError
from kdlab.losses import hint_loss
from kdlab.models import PRE_LOGITS, FeatureTaps, feature_stages
from kdlab.strategies.base import RunningMeans, check_finite, lightning_optimization, probe


class AuxHead(nn.Module):
    """A shallow exit: global average pooling of the stage's features, a bottleneck into the
    size of the network's own penultimate embedding (where the feature hint compares), and
    a linear classifier."""

    def __init__(self, feat_shape: Sequence[int], embed_dim: int, num_classes: int):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(feat_shape[0], embed_dim), nn.ReLU())
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        pooled = feat.flatten(2).mean(-1) if feat.dim() > 2 else feat  # (b, c)
        embed = self.bottleneck(pooled)  # (b, embed_dim)
        return self.classifier(embed), embed


class Exit(nn.Module):
    """The network up to one auxiliary head, as a model of its own (for evaluation)."""

    def __init__(self, student: nn.Module, taps: FeatureTaps, path: str, head: AuxHead):
        super().__init__()
        self.student, self.head, self.path = student, head, path
        self.taps = taps

    def forward(self, x: Tensor) -> Tensor:
        self.student(x)
        return self.head(self.taps.pop()[self.path])[0]


class SelfDistillation(pl.LightningModule):
    """Be Your Own Teacher (Zhang, Song, Gao, Chen, Bao & Ma, ICCV 2019).

    Auxiliary heads sit on the student's intermediate stages (``heads``: tap paths; null:
    every declared feature stage but the last). Each head gets the response terms of
    ``distill`` with the network's own (deepest) classifier as the teacher, detached; the
    deepest classifier gets the terms that need no teacher. Each head's bottleneck features
    also regress the network's penultimate embedding (``feature_weight``, mean squared
    error). The heads are not part of the student that is reported and exported.
    """

    name = "self"

    def __init__(
        self,
        student: nn.Module,
        terms: Mapping[str, Term],
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        input_shape: Sequence[int],
        scheduler: Callable | None = None,
        heads: Sequence[str] | None = None,
        feature_weight: float = 0.05,
    ):
        super().__init__()
        if any(isinstance(t, FeatureTerm) for t in terms.values()):
            raise KdlabError("self-distillation takes response terms (kd, dkd, dist, ...); use a response method")
        self.student = student
        self.terms = nn.ModuleDict(dict(terms))
        self.head_paths = list(heads) if heads else feature_stages(student, "student")[:-1]
        if not self.head_paths:
            raise KdlabError("self-distillation needs at least one intermediate stage for a head: set strategy.heads")
        self.taps = FeatureTaps(student, [*self.head_paths, PRE_LOGITS], "student")
        _, feats = probe(student, self.taps, input_shape)
        embed_dim = feats[PRE_LOGITS][0].numel()
        self.heads = nn.ModuleList(AuxHead(feats[p].shape[1:], embed_dim, num_classes) for p in self.head_paths)
        self.feature_weight = feature_weight
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes, average="micro") for _ in range(len(self.heads) + 1)
        )
        self.val_acc_best = MaxMetric()
        self.train_means, self.val_means = RunningMeans(), RunningMeans()

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def exits(self) -> list[tuple[str, nn.Module]]:
        """(tap path, model up to that head) for each auxiliary exit, shallow to deep."""
        return [(p, Exit(self.student, self.taps, p, h)) for p, h in zip(self.head_paths, self.heads)]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y, *rest = batch
        index = rest[0] if rest else None
        logits = self.student(x)
        feats = self.taps.pop()
        deep_embed = feats[PRE_LOGITS].flatten(1).detach()
        deep = StepOutputs(logits, y, index=index, epoch=self.current_epoch)
        losses = {f"loss_{n}": t(deep) for n, t in self.terms.items() if not t.needs_teacher}
        hint = []
        for path, head in zip(self.head_paths, self.heads):
            head_logits, embed = head(feats[path])
            out = StepOutputs(head_logits, y, teacher_logits=logits.detach(), index=index, epoch=self.current_epoch)
            for n, t in self.terms.items():
                losses[f"loss_{n}"] = losses.get(f"loss_{n}", 0.0) + t(out)
            hint.append(hint_loss(embed, deep_embed))
        losses["loss_hint"] = self.feature_weight * torch.stack(hint).sum()
        loss = torch.stack(list(losses.values())).sum()
        check_finite(loss, losses, self.current_epoch, self.global_step)
        self.train_means.add({"loss": loss, **losses, "acc": (logits.detach().argmax(-1) == y).float().mean()}, len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": v for k, v in self.train_means.pop().items()}, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        feats = self.taps.pop()
        for i, head in enumerate(self.heads):
            self.val_acc[i].update(head(feats[self.head_paths[i]])[0], y)
        self.val_acc[-1].update(logits, y)
        self.val_means.add({"loss": F.cross_entropy(logits, y)}, len(y))

    def on_validation_epoch_end(self) -> None:
        accs = [m.compute() for m in self.val_acc]
        for m in self.val_acc:
            m.reset()
        self.log_dict({f"val/{k}": v for k, v in self.val_means.pop().items()}, sync_dist=True)
        self.log_dict({f"val/exit{i}/acc": a for i, a in enumerate(accs[:-1])}, sync_dist=True)
        self.log("val/acc", accs[-1], prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_acc_best(accs[-1])

    def configure_optimizers(self):
        return lightning_optimization(self.parameters(), self.optimizer_factory, self.scheduler_factory)
