"""What the strategy modules share: cheap epoch means, finite-loss checks, probing taps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from kdlab.distill import Term
from kdlab.errors import KdlabError
from kdlab.models import FeatureTaps


class RunningMeans:
    """Batch-size-weighted sums of detached scalars, read once per epoch. Per step this costs a
    few tensor adds, where ``self.log`` costs milliseconds (Lightning moves its result
    collection on every call), which would dominate the step time of small models."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: Mapping[str, Tensor], n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach() * n
        self.count += n

    def pop(self) -> dict[str, Tensor]:
        means = {k: s / max(self.count, 1) for k, s in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def check_finite(loss: Tensor, parts: Mapping[str, Tensor], epoch: int, step: int) -> None:
    """Stop with one actionable line when the loss is NaN or infinite."""
    if not torch.isfinite(loss):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
        raise KdlabError(
            f"non-finite loss at epoch {epoch}, step {step} ({detail}); "
            "lower the learning rate or the loss weights. Checkpoints saved so far are kept"
        )


@torch.no_grad()
def probe(model: nn.Module, taps: FeatureTaps, input_shape: Sequence[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """(logits, tapped features) of one dummy batch of two, in eval mode: the shapes learnable parts are built from."""
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.zeros(2, *input_shape))
        return logits, taps.pop()
    finally:
        model.train(was_training)


def optimization(
    params: Iterable[nn.Parameter],
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """An optimizer over the trainable ``params`` and its (epoch-stepped) scheduler."""
    opt = optimizer([p for p in params if p.requires_grad])
    return opt, (scheduler(opt) if scheduler is not None else None)


def lightning_optimization(params: Iterable[nn.Parameter], optimizer: Callable, scheduler: Callable | None):
    """``configure_optimizers``' answer for one optimizer stepped by Lightning (scheduler per epoch)."""
    opt, sch = optimization(params, optimizer, scheduler)
    return opt if sch is None else {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "epoch"}}


def prepare_terms(trainer, terms: Iterable[Term]) -> None:
    """Give terms the training labels (memory banks, negative sampling) once the data exists."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and hasattr(datamodule, "train_targets"):
        targets = datamodule.train_targets()
        for term in terms:
            term.prepare(targets)
