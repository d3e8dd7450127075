"""Multi-Level Logit Distillation (MLKD; Jin, Wang & Lin, CVPR 2023): terms that read both models'
logits on a strongly augmented view of each training batch too (``data.strong_view=true``).

``conf/method/mlkd.yaml`` puts the authors' loss together from three terms: ``ce``
(``CrossEntropy``, the weak view), ``ce_strong`` (``StrongViewCrossEntropy``, the strong view) and
``mlkd`` (``MLKD``: the instance-, batch- and class-level parts). Each cross-entropy is a task term
of its own, so that ``train/loss_mlkd`` is the distillation part alone and DOT's split
(``Term.task_loss``) puts both cross-entropies on the task side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.config import NonNegativeFloat, PositiveFloat
from kdlab.errors import KdlabError
from kdlab.losses.multilevel import EXTRA_TEMPERATURES, mlkd_loss
from kdlab.methods.base import StepOutputs, Term
from kdlab.methods.response import CrossEntropy


def _no_strong_view(term: str) -> KdlabError:
    return KdlabError(
        f"{term} reads the models' logits on a strong view of each training batch and this step has none: "
        "set data.strong_view=true (data cifar10, cifar100 or mnist1d) and strategy=offline"
    )


class StrongViewCrossEntropy(CrossEntropy):
    """Cross-entropy of the student's logits on the strong view with the labels: MLKD's second
    cross-entropy (the authors' ``loss_ce = CE_WEIGHT * (CE(weak) + CE(strong))``). A task term, as
    ``CrossEntropy``; ``label_smoothing`` as there (the authors use none)."""

    reads_strong_view = True

    def loss(self, out: StepOutputs) -> Tensor:
        if out.student_logits_strong is None:
            raise _no_strong_view(type(self).__name__)
        return F.cross_entropy(out.student_logits_strong, out.target, label_smoothing=self.label_smoothing)


class MLKD(Term):
    """Jin et al. (2023): instance- (KD), batch- and class-level alignment of the logits, each
    summed over the temperatures (``temperature``, 3, 5, 2, 6), on the weak view and (KD only) the
    strong view, as the authors' ``KD_ours`` (``kdlab.losses.multilevel.mlkd_loss``, which lists
    the quirks of their code that this reproduces). ``weight`` is their ``KD_WEIGHT``: it multiplies
    every part. The cross-entropies on both views are the terms ``ce`` and ``ce_strong``.

    ``standardize``: MLKD+LS (Sun et al., CVPR 2024): the instance-level KD on Z-scored logits, the
    batch- and class-level parts and the masks on the raw ones (their MLKD.py); their CIFAR-100
    runs then take temperature 2 and weight 9 (6 on some pairs), the cross-entropies' 0.1 unchanged.
    """

    reads_strong_view = True

    def __init__(self, weight: NonNegativeFloat = 0.9, temperature: PositiveFloat = 4.0, standardize: bool = False):
        super().__init__(weight)
        self.temperature, self.standardize = float(temperature), standardize

    @property
    def temperatures(self) -> tuple[float, ...]:
        return (self.temperature, *EXTRA_TEMPERATURES)

    def loss(self, out: StepOutputs) -> Tensor:
        if out.student_logits_strong is None or out.teacher_logits_strong is None:
            raise _no_strong_view(type(self).__name__)
        parts = mlkd_loss(
            out.student_logits,
            out.teacher_logits,
            out.student_logits_strong,
            out.teacher_logits_strong,
            self.temperature,
            self.standardize,
        )
        return torch.stack(list(parts.values())).sum()

    def extra_repr(self) -> str:
        ls = ", standardize=True" if self.standardize else ""
        return f"weight={self.weight}, temperatures={self.temperatures}{ls}"
