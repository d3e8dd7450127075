"""Response-based terms: the student matches the teacher's logits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import ARGUMENT_HINTS, Bound, NonNegativeFloat, NonNegativeInt, OpenUnit, PositiveFloat
from kdlab.errors import KdlabError
from kdlab.losses import dist_loss, dkd_loss, kd_loss, mse_logits_loss, standardize_logits, tf_kd_loss
from kdlab.methods.base import StepOutputs, Term
from kdlab.methods.curriculum import CurriculumTemperature, curriculum_from

ARGUMENT_HINTS["standardize"] = (
    "the logit terms kd (kdlab.methods.KD), dkd (DKD), dist (DIST) and mlkd (MLKD): logit standardization, "
    "e.g. method.terms.kd.standardize=true"
)
ARGUMENT_HINTS["curriculum"] = (
    "the logit terms kd (kdlab.methods.KD), dkd (DKD) and dist (DIST): CTKD's learnable temperature, "
    "e.g. method=ctkd or +method.terms.dkd.curriculum.variant=global"
)


def logits(out: StepOutputs, standardize: bool) -> tuple[Tensor, Tensor]:
    """(student, teacher) logits of the step, each Z-scored per input when ``standardize``
    (``standardize_logits``: Sun et al., CVPR 2024), the temperature applied after by the loss."""
    if standardize:
        return standardize_logits(out.student_logits), standardize_logits(out.teacher_logits)
    return out.student_logits, out.teacher_logits


class LogitTerm(Term):
    """A term on both models' logits whose temperature may be CTKD's learnable one
    (``curriculum``: the arguments of ``kdlab.methods.curriculum.CurriculumTemperature``, e.g.
    ``{variant: global}``; the fixed ``temperature`` is then unused, as the authors' ``--kd_T``
    with ``--have_mlp 1``). The temperature module is a submodule of the term: the strategy
    optimises it with the student's optimizer and saves it in the checkpoints."""

    curriculum: CurriculumTemperature | None

    def set_curriculum(self, curriculum: CurriculumTemperature | Mapping | None) -> None:
        self.curriculum = curriculum_from(curriculum, type(self).__name__)  # a module is registered as a submodule

    def step_temperature(self, out: StepOutputs) -> float | Tensor:
        """The fixed temperature, or the curriculum's for this step: (1,) global, (b, 1) instance-wise."""
        if self.curriculum is None:
            return self.temperature
        return self.curriculum(out.student_logits, out.teacher_logits, out.epoch)

    def select_taps(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if self.curriculum is not None:  # the instance-wise MLP takes both models' probabilities
            self.curriculum.bind_model(student, type(self).__name__)


class CrossEntropy(Term):
    """Cross-entropy with the ground-truth labels (optionally label-smoothed)."""

    needs_teacher = False
    task_loss = True

    def __init__(self, weight: NonNegativeFloat = 1.0, label_smoothing: Annotated[float, Bound(0, 1)] = 0.0):
        super().__init__(weight)
        self.label_smoothing = label_smoothing

    def loss(self, out: StepOutputs) -> Tensor:
        return F.cross_entropy(out.student_logits, out.target, label_smoothing=self.label_smoothing)


class KD(LogitTerm):
    """Hinton et al. (2015): KL to the teacher's softened distribution, times T^2.
    ``standardize``: KD+LS (Sun et al., CVPR 2024), both logits Z-scored before the temperature
    (then the paper's base temperature, 2 or 3 in its CIFAR-100 table, with weight 9).
    ``curriculum``: CTKD (Li et al., AAAI 2023), the learnable temperature of
    ``kdlab.methods.curriculum`` instead of ``temperature`` (``method=ctkd``); with ``standardize``,
    CTKD+LS as the LS authors' copy of CTKD (the temperature divides the Z-scored logits)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        temperature: PositiveFloat = 4.0,
        standardize: bool = False,
        curriculum: CurriculumTemperature | Mapping | None = None,
    ):
        super().__init__(weight)
        self.temperature, self.standardize = float(temperature), standardize
        self.set_curriculum(curriculum)

    def loss(self, out: StepOutputs) -> Tensor:
        return kd_loss(*logits(out, self.standardize), self.step_temperature(out))

    def extra_repr(self) -> str:
        ls = ", standardize=True" if self.standardize else ""
        temperature = "" if self.curriculum is not None else f", temperature={self.temperature}"  # the curriculum's
        return f"weight={self.weight}{temperature}{ls}"


class MSELogits(Term):
    """Ba & Caruana (2014): regression onto the teacher's logits."""

    def loss(self, out: StepOutputs) -> Tensor:
        return mse_logits_loss(out.student_logits, out.teacher_logits)


class DKD(LogitTerm):
    """Zhao et al. (2022): ``alpha`` TCKD + ``beta`` NCKD, ramped up linearly over the first
    ``warmup_epochs`` epochs (factor min((epoch + 1) / warmup, 1), as mdistiller's 1-based epochs).
    ``standardize``: DKD+LS (Sun et al., CVPR 2024), both logits Z-scored before the temperature;
    the target mask is the label's, as in the authors' code.
    ``curriculum``: DKD+CTKD (Li et al., AAAI 2023), the learnable temperature of
    ``kdlab.methods.curriculum`` instead of ``temperature``. The CTKD authors' DKD has no warm-up
    (``warmup_epochs=0``); their script's commented DKD line sets CE 1, DKD 1, alpha 1, beta 2
    (ResNet56 -> ResNet20); with an instance-wise temperature each sample's loss takes its own T^2 (kdlab's form)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        alpha: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 8.0,
        temperature: PositiveFloat = 4.0,
        warmup_epochs: NonNegativeInt = 20,
        standardize: bool = False,
        curriculum: CurriculumTemperature | Mapping | None = None,
    ):
        super().__init__(weight)
        self.alpha, self.beta, self.warmup_epochs = alpha, beta, warmup_epochs
        self.temperature, self.standardize = float(temperature), standardize
        self.set_curriculum(curriculum)

    def loss(self, out: StepOutputs) -> Tensor:
        ramp = min((out.epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        student, teacher = logits(out, self.standardize)
        return ramp * dkd_loss(student, teacher, out.target, self.alpha, self.beta, self.step_temperature(out))


class DIST(LogitTerm):
    """Huang et al. (2022): inter- (``beta``) and intra-class (``gamma``) Pearson relations.
    ``standardize``: both logits Z-scored before the temperature (logit standardization, Sun et
    al., CVPR 2024). The LS paper and code apply it to KD, DKD, MLKD and CTKD, not to DIST: DIST+LS
    is kdlab's combination, with no published number.
    ``curriculum``: CTKD's learnable temperature (``kdlab.methods.curriculum``) instead of
    ``temperature``, global only (the intra-class relation spans the batch). DIST+CTKD is kdlab's
    combination too, with no published number."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        beta: NonNegativeFloat = 2.0,
        gamma: NonNegativeFloat = 2.0,
        temperature: PositiveFloat = 4.0,
        standardize: bool = False,
        curriculum: CurriculumTemperature | Mapping | None = None,
    ):
        super().__init__(weight)
        self.beta, self.gamma = beta, gamma
        self.temperature, self.standardize = float(temperature), standardize
        self.set_curriculum(curriculum)
        if self.curriculum is not None and self.curriculum.variant != "global":
            raise KdlabError(
                "DIST.curriculum.variant=instance: DIST's intra-class relation spans the batch and takes "
                "one temperature; use curriculum.variant=global"
            )

    def loss(self, out: StepOutputs) -> Tensor:
        return dist_loss(*logits(out, self.standardize), self.beta, self.gamma, self.step_temperature(out))


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
