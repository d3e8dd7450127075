"""Response-based terms: the student matches the teacher's logits."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

from kdlab.config import Bound, NonNegativeFloat, NonNegativeInt, OpenUnit, PositiveFloat
from kdlab.losses import dist_loss, dkd_loss, kd_loss, mse_logits_loss, tf_kd_loss
from kdlab.methods.base import StepOutputs, Term


class CrossEntropy(Term):
    """Cross-entropy with the ground-truth labels (optionally label-smoothed)."""

    needs_teacher = False

    def __init__(self, weight: NonNegativeFloat = 1.0, label_smoothing: Annotated[float, Bound(0, 1)] = 0.0):
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def loss(self, out: StepOutputs) -> Tensor:
        return F.cross_entropy(out.student_logits, out.target, label_smoothing=self.label_smoothing)


class KD(Term):
    """Hinton et al. (2015): KL to the teacher's softened distribution, times T^2."""

    def __init__(self, weight: NonNegativeFloat = 1.0, temperature: PositiveFloat = 4.0):
        super().__init__(weight)
        self.temperature = float(temperature)

    def loss(self, out: StepOutputs) -> Tensor:
        return kd_loss(out.student_logits, out.teacher_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, temperature={self.temperature}"


class MSELogits(Term):
    """Ba & Caruana (2014): regression onto the teacher's logits."""

    def loss(self, out: StepOutputs) -> Tensor:
        return mse_logits_loss(out.student_logits, out.teacher_logits)


class DKD(Term):
    """Zhao et al. (2022): ``alpha`` TCKD + ``beta`` NCKD, ramped up linearly over the first
    ``warmup_epochs`` epochs (factor min((epoch + 1) / warmup, 1), as mdistiller's 1-based epochs)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        alpha: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 8.0,
        temperature: PositiveFloat = 4.0,
        warmup_epochs: NonNegativeInt = 20,
    ):
        super().__init__(weight)
        self.alpha, self.beta, self.warmup_epochs = alpha, beta, warmup_epochs
        self.temperature = float(temperature)

    def loss(self, out: StepOutputs) -> Tensor:
        ramp = min((out.epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return ramp * dkd_loss(
            out.student_logits, out.teacher_logits, out.target, self.alpha, self.beta, self.temperature
        )


class DIST(Term):
    """Huang et al. (2022): inter- (``beta``) and intra-class (``gamma``) Pearson relations."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 2.0,
        gamma: NonNegativeFloat = 2.0,
        temperature: PositiveFloat = 4.0,
    ):
        super().__init__(weight)
        self.beta, self.gamma = beta, gamma
        self.temperature = float(temperature)

    def loss(self, out: StepOutputs) -> Tensor:
        return dist_loss(out.student_logits, out.teacher_logits, self.beta, self.gamma, self.temperature)


class TfKD(Term):
    """Yuan et al. (2020), Tf-KD_reg: a virtual teacher made from the label, no model needed."""

    needs_teacher = False

    def __init__(
        self, weight: NonNegativeFloat = 10.0, correct_prob: OpenUnit = 0.99, temperature: PositiveFloat = 20.0
    ):
        super().__init__(weight)
        self.correct_prob = correct_prob
        self.temperature = float(temperature)

    def loss(self, out: StepOutputs) -> Tensor:
        return tf_kd_loss(out.student_logits, out.target, self.correct_prob, self.temperature)
