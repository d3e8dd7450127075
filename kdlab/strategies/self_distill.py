"""Self-distillation: the student teaches itself, its deepest classifier teaching classifiers
attached to its intermediate stages (Be Your Own Teacher)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat
from kdlab.errors import KdlabError
from kdlab.losses import hint_loss
from kdlab.methods import FeatureTerm, StepOutputs, Term
from kdlab.models import PRE_LOGITS, FeatureTaps, count_params, feature_stages
from kdlab.report.results import model_report
from kdlab.strategies.base import (
    STUDENT,
    DistillationModule,
    Fitted,
    StepLosses,
    Strategy,
    Trained,
    batch_accuracy,
    lightning_optimization,
    no_init_phases,
    probe,
)

if TYPE_CHECKING:
    from kdlab.context import RunContext


@dataclass
class SelfDistill(Strategy):
    """Be Your Own Teacher: heads on the student's stages learn from its deepest classifier
    (``SelfDistillation``). Reports the student without its heads, and each exit (``exits``)."""

    name = "self"
    heads: list[str] | None = None  # tap paths that get a head; null: every declared feature stage but the last
    feature_weight: NonNegativeFloat = 0.05

    def fit(self, run: RunContext) -> Fitted:
        spec = run.cfg.student
        optimizer, scheduler = run.optimization(spec)
        self.module = SelfDistillation(
            run.model(spec),
            no_init_phases(run.terms(), "self"),
            optimizer,
            run.data.num_classes,
            run.data.input_shape,
            scheduler,
            self.heads,
            self.feature_weight,
        )
        trainer = run.fit(self.module)
        student = Trained(self.module.student, spec.arch, OmegaConf.to_container(spec.kwargs, resolve=True))
        return Fitted(student, None, self.module.best_val_acc(), trainer)

    def results(self, data) -> dict:
        exits = [
            {
                "exit": i,
                "tap": path,
                "test_acc": model_report(m, path, data)[0]["test_acc"],
                "head_params": count_params(self.module.heads[i]),
            }
            for i, (path, m) in enumerate(self.module.exits())
        ]
        return {"exits": exits}


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


class SelfDistillation(DistillationModule):
    """Be Your Own Teacher (Zhang, Song, Gao, Chen, Bao & Ma, ICCV 2019).

    Auxiliary heads sit on the student's intermediate stages (``heads``: tap paths; null:
    every declared feature stage but the last). Each head gets the response terms of
    ``method`` with the network's own (deepest) classifier as the teacher, detached; the
    deepest classifier gets the terms that need no teacher. Each head's bottleneck features
    also regress the network's penultimate embedding (``feature_weight``, mean squared
    error). The heads are not part of the student that is reported and exported.
    """

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
        if any(isinstance(t, FeatureTerm) for t in terms.values()):
            raise KdlabError("self-distillation takes response terms (kd, dkd, dist, ...); use a response method")
        head_paths = list(heads) if heads else feature_stages(student, "student")[:-1]
        super().__init__(num_classes, [*(f"exit{i}" for i in range(len(head_paths))), STUDENT])
        self.student = student
        self.terms = nn.ModuleDict(dict(terms))
        self.head_paths = head_paths
        if not self.head_paths:
            raise KdlabError("self-distillation needs at least one intermediate stage for a head: set strategy.heads")
        self.taps = FeatureTaps(student, [*self.head_paths, PRE_LOGITS], "student")
        _, feats = probe(student, self.taps, input_shape)
        embed_dim = feats[PRE_LOGITS][0].numel()
        self.heads = nn.ModuleList(AuxHead(feats[p].shape[1:], embed_dim, num_classes) for p in self.head_paths)
        self.feature_weight = feature_weight
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def exits(self) -> list[tuple[str, nn.Module]]:
        """(tap path, model up to that head) for each auxiliary exit, shallow to deep."""
        return [(p, Exit(self.student, self.taps, p, h)) for p, h in zip(self.head_paths, self.heads)]

    def losses(self, x: Tensor, y: Tensor, index: Tensor | None) -> StepLosses:
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
        return StepLosses(torch.stack(list(losses.values())).sum(), losses, {"acc": batch_accuracy(logits, y)})

    def outputs(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.student(x)
        feats = self.taps.pop()
        exits = {f"exit{i}": head(feats[path])[0] for i, (path, head) in enumerate(zip(self.head_paths, self.heads))}
        return {**exits, STUDENT: logits}

    def configure_optimizers(self):
        return lightning_optimization(self.parameters(), self.optimizer_factory, self.scheduler_factory)
