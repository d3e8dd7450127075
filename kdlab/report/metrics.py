"""Validation metrics of a trained student against its teacher, computed from test-set logits."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_accuracy


@torch.no_grad()
def predict(model: nn.Module, datamodule, loader=None) -> tuple[Tensor, Tensor]:
    """(logits (n, c), targets (n,)) of ``model`` over the test set (or ``loader``), in eval mode."""
    loader = datamodule.test_dataloader() if loader is None else loader
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, targets = [], []
    try:
        for batch in loader:
            x, y, *_ = datamodule.preprocess((batch[0].to(device), batch[1].to(device)), train=False)
            logits.append(model(x).float().cpu())
            targets.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Top-1 accuracy, a fraction in [0, 1] (torchmetrics, as logged for train and val)."""
    return multiclass_accuracy(logits, target, num_classes=logits.shape[-1], average="micro").item()


def per_class_accuracy(logits: Tensor, target: Tensor, num_classes: int | None = None) -> list[float | None]:
    """Accuracy on the inputs of each class (None for a class with no input)."""
    num_classes = num_classes or logits.shape[-1]
    correct = (logits.argmax(-1) == target).double()
    totals = torch.bincount(target, minlength=num_classes).double()
    hits = torch.bincount(target, weights=correct, minlength=num_classes)
    return [None if n == 0 else h / n for h, n in zip(hits.tolist(), totals.tolist())]


def state_size_mb(model: nn.Module) -> float:
    """Bytes of the model's parameters and buffers (shared tensors once), in MB: its
    safetensors size up to the small header."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 1e6


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of inputs where the student's top-1 class equals the teacher's."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


def mean_kl(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """Mean over inputs of KL(teacher || student) at temperature 1, in nats."""
    log_p = F.log_softmax(student_logits.double(), -1)  # (n, c)
    log_q = F.log_softmax(teacher_logits.double(), -1)  # (n, c)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True).item()


def expected_calibration_error(logits: Tensor, target: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al., 2017): confidence-binned |accuracy - confidence|, weighted by bin size.
    Bins are equal-width on (0, 1], right-closed."""
    conf, pred = F.softmax(logits.double(), -1).max(-1)  # (n,), (n,)
    correct = (pred == target).double()
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)  # (n,) bin of each confidence
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.double().mean() * (correct[in_bin].mean() - conf[in_bin].mean()).abs()
    return ece.item()


@torch.no_grad()
def latency_ms(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time (ms) of one forward pass of a ``batch_size`` batch on the model's device, in eval mode."""
    device = next(model.parameters()).device
    x = torch.randn(batch_size, *input_shape, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was_training)
    return statistics.median(times)
