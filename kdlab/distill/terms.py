"""Loss terms: a distillation method is a dict of weighted terms (``conf/distill/<method>.yaml``).

A term wraps one pure loss of ``kdlab.losses`` with its weight and hyper-parameters, says
which feature taps it reads, and owns the learnable parts its method needs. Strategies
hand every term the same ``StepOutputs`` and sum what they return, so any method runs under
any strategy (offline, online, self) without new code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.losses import kd_loss, mse_logits_loss


@dataclass
class StepOutputs:
    """What one training step gives the terms: logits, labels and tapped features."""

    student_logits: Tensor  # (b, c)
    target: Tensor  # (b,)
    teacher_logits: Tensor | None = None  # (b, c), no grad
    student_feats: dict[str, Tensor] = field(default_factory=dict)  # tap path -> features
    teacher_feats: dict[str, Tensor] = field(default_factory=dict)
    epoch: int = 0


class Term(nn.Module):
    """One weighted term. Subclasses implement ``loss``; ``forward`` returns it already weighted."""

    needs_teacher: bool = True
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def build(self, student_feats: dict[str, Tensor], teacher_feats: dict[str, Tensor]) -> None:
        """Create learnable parts from probed feature shapes (regressors, embeddings). Default: none."""

    def loss(self, out: StepOutputs) -> Tensor:
        raise NotImplementedError

    def forward(self, out: StepOutputs) -> Tensor:
        return self.weight * self.loss(out)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class CrossEntropy(Term):
    """Cross-entropy with the ground-truth labels (optionally label-smoothed)."""

    needs_teacher = False

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def loss(self, out: StepOutputs) -> Tensor:
        return F.cross_entropy(out.student_logits, out.target, label_smoothing=self.label_smoothing)


class KD(Term):
    """Hinton et al. (2015): KL to the teacher's softened distribution, times T^2."""

    def __init__(self, weight: float = 1.0, temperature: float = 4.0):
        super().__init__(weight)
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def loss(self, out: StepOutputs) -> Tensor:
        return kd_loss(out.student_logits, out.teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}"


class MSELogits(Term):
    """Ba & Caruana (2014): regression onto the teacher's logits."""

    def loss(self, out: StepOutputs) -> Tensor:
        return mse_logits_loss(out.student_logits, out.teacher_logits)
