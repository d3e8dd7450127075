"""Curriculum Temperature for Knowledge Distillation (CTKD; Li, Li, Yang, Zhao, Song, Luo, Li &
Yang, AAAI 2023).

The temperature of a logit term becomes a learnable module trained *against* the student: the
distillation loss reaches it through a gradient-reversal layer, so where the student descends the
loss, the temperature ascends it. The strength of the reversal grows over the first epochs along a
cosine curriculum (easy to hard). A logit term (``kdlab.methods.KD``, ``DKD``, ``DIST``) takes it
through its ``curriculum`` argument (the arguments of ``CurriculumTemperature``), e.g.
``method=ctkd`` or ``+method.terms.dkd.curriculum.variant=global``.

Facts of the authors' code (zhengli97/CTKD; its copy in logit-standardization-KD/CTKD is the same
but for the logit standardization of the KD loss):

- ``models/temp_global.py``: ``Global_T`` is one parameter initialised to 1; the reversal
  ``GradientReversalFunction`` returns ``x.clone()`` and multiplies the incoming gradient by
  ``lambda_`` (not by ``-lambda_``, whatever its docstring says): the reversal comes from the
  schedule's values, which go from 0 down to -1 (``--decay_max 0 --decay_min -1``).
- ``train_student.py``: ``CosineDecay.get_value(i)`` is
  ``(cos(min(max(i, 0), loops) pi / loops) + 1) / 2 (max - min) + min``, evaluated once per epoch
  at the 1-based epoch (``for epoch in range(1, epochs + 1)``): -0.0245 at epoch 1, -0.5 at epoch
  5, -1 from epoch 10 on (``--decay_loops 10``; the values of the authors' logs). The paper's
  Eq. 11 raises lambda from 0 to 1 with cos((1 + n / loops) pi): the same numbers with the
  opposite sign, as the authors explain on their project page. ``LinearDecay.get_value(i)`` is
  ``-i (max - min) / loops`` with ``i`` clipped to ``[0, loops - 1]``: it ignores ``max`` as an
  offset and never reaches ``min`` (kept as is).
- ``helper/loops.py``: ``temp = t_start + t_end * sigmoid(module(...))`` (``--t_start 1 --t_end 20``
  by default: the temperature lies in (1, 21) and starts at 1 + 20 sigmoid(1) = 15.62), the same
  temperature for the KD term (``DistillKL``) and for DKD (``DKDloss``), which multiply by
  ``T * T`` as with a fixed one.
- The temperature's parameters are in the student's SGD optimizer, one parameter group with the
  student's learning rate, momentum and weight decay (5e-4 on CIFAR-100); kdlab's strategies
  optimise a term's parameters with the student's optimizer likewise.

Instance-wise temperature (``variant="instance"``): the authors' repositories do not hold its
module (their README links it on cloud drives only) but its loss (the README's ``KL_Loss``, used
per sample: see ``kdlab.losses.kd_loss``). The module here is written from the paper's Fig. 2
(b) and the authors' project page: the teacher's and the student's class probabilities (softmax
at T = 1 of the raw logits, teacher first), concatenated, go through a two-layer MLP ("two 1x1
convolutions") that gives one value per sample, bounded as the global one. kdlab's choices where
nothing says: hidden width ``hidden`` with a ReLU between the layers, PyTorch's default
initialisation, the reversal on the MLP's output, and the student's probabilities detached (the
module learns from the loss through its output only; no gradient reaches the student through
the module's input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, PositiveFloat, PositiveInt, check_arguments, checked
from kdlab.errors import KdlabError


class GradientReversal(torch.autograd.Function):
    """Identity forward (a copy); backward multiplies the gradient by ``scale`` (Ganin & Lempitsky,
    2015), as the authors' ``GradientReversalFunction``: the sign is the caller's, CTKD passes a
    scale in [-1, 0]."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = float(scale)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` forward; its gradient times ``scale`` backward (``GradientReversal``)."""
    return GradientReversal.apply(x, scale)


def cosine_decay(epoch: int, max_value: float, min_value: float, loops: float) -> float:
    """The authors' ``CosineDecay.get_value`` at their (1-based) ``epoch``: from ``max_value`` to
    ``min_value`` along half a cosine over ``loops`` epochs, then ``min_value``."""
    i = min(max(epoch, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (max_value - min_value) + min_value


def linear_decay(epoch: int, max_value: float, min_value: float, loops: float) -> float:
    """The authors' ``LinearDecay.get_value`` at their (1-based) ``epoch``: ``-i (max - min) / loops``
    with ``i`` clipped to ``[0, loops - 1]`` (their quirks: no ``max_value`` offset, ``min_value``
    never reached)."""
    i = 0 if epoch < 0 else (loops - 1 if epoch >= loops else epoch)
    return i * -((max_value - min_value) / loops)


DECAYS = {"cosine": cosine_decay, "linear": linear_decay}


class CurriculumTemperature(nn.Module):
    """CTKD's learnable temperature: ``t_start + t_end * sigmoid(v)``, where ``v`` is one learned
    value (``global``: the authors' ``Global_T``, initialised to 1) or one per sample from the two
    models' probabilities (``instance``: see the module docstring), seen by the loss through a
    gradient reversal of strength ``decay(epoch)``.

    ``decay`` (``cosine`` or ``linear``), ``decay_max``, ``decay_min``, ``decay_loops``: the
    authors' ``--cosine_decay``, ``--decay_max``, ``--decay_min``, ``--decay_loops`` (defaults: their
    CIFAR-100 script's 0, -1, 10; their ImageNet script's loops: 5). ``t_start``, ``t_end``: their
    ``--t_start``, ``--t_end`` (defaults 1, 20). ``num_classes`` (``instance`` only): the MLP's input
    is twice that; left null, the term reads it from the student (``num_classes``) when the
    strategy selects its taps. ``hidden``: the MLP's hidden width (``instance`` only).
    """

    @checked
    def __init__(
        self,
        variant: Literal["global", "instance"] = "global",
        t_start: NonNegativeFloat = 1.0,
        t_end: PositiveFloat = 20.0,
        decay: Literal["cosine", "linear"] = "cosine",
        decay_max: float = 0.0,
        decay_min: float = -1.0,
        decay_loops: PositiveFloat = 10.0,
        num_classes: PositiveInt | None = None,
        hidden: PositiveInt = 256,
    ):
        super().__init__()
        self.variant, self.decay = variant, decay
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.decay_max, self.decay_min, self.decay_loops = float(decay_max), float(decay_min), float(decay_loops)
        self.hidden = hidden
        self.mlp: nn.Sequential | None = None
        if variant == "global":
            self.global_t = nn.Parameter(torch.ones(1))
        elif num_classes is not None:
            self.bind(num_classes)
        self.last: Tensor | None = None  # the mean temperature of the last step (detached), for logging

    def bind(self, num_classes: int) -> None:
        """Build the instance-wise MLP for ``num_classes`` classes (no-op for ``global`` or when built)."""
        if self.variant != "instance" or self.mlp is not None:
            return
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1))

    def bind_model(self, model: nn.Module, owner: str) -> None:
        """``bind`` with the class count of ``model`` (its ``num_classes``), for the instance variant."""
        if self.variant != "instance" or self.mlp is not None:
            return
        n = getattr(model, "num_classes", None)
        if not isinstance(n, int) or n < 1:
            raise KdlabError(
                f"{owner}.curriculum.variant=instance needs the class count and {type(model).__name__} "
                f"has no num_classes; set {owner}.curriculum.num_classes"
            )
        self.bind(n)

    def scale(self, epoch: int) -> float:
        """The gradient-reversal strength at kdlab's 0-based ``epoch``: the authors' ``decay_value``
        at their 1-based epoch ``epoch + 1``."""
        return DECAYS[self.decay](epoch + 1, self.decay_max, self.decay_min, self.decay_loops)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, epoch: int) -> Tensor:
        """The temperature of one step: (1,) for ``global``, (b, 1) for ``instance``."""
        if self.variant == "global":
            value = self.global_t  # (1,)
        else:
            if self.mlp is None:
                raise KdlabError(
                    "curriculum.variant=instance was not given the class count; set curriculum.num_classes"
                )
            probs = torch.cat([F.softmax(teacher_logits, -1), F.softmax(student_logits.detach(), -1)], -1)  # (b, 2c)
            value = self.mlp(probs.to(self.mlp[0].weight.dtype))  # (b, 1)
        temperature = self.t_start + self.t_end * torch.sigmoid(reverse_gradient(value, self.scale(epoch)))
        self.last = temperature.detach().mean()
        return temperature

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant}, t_start={self.t_start}, t_end={self.t_end}, decay={self.decay}, "
            f"decay_max={self.decay_max}, decay_min={self.decay_min}, decay_loops={self.decay_loops}"
        )


def curriculum_from(value: CurriculumTemperature | Mapping | None, owner: str) -> CurriculumTemperature | None:
    """A term's ``curriculum`` argument as a module: None stays None, a mapping holds the arguments of
    ``CurriculumTemperature`` (checked in one line naming ``<owner>.curriculum.<key>``)."""
    if value is None or isinstance(value, CurriculumTemperature):
        return value
    if not isinstance(value, Mapping):
        raise KdlabError(
            f"{owner}.curriculum={value!r} is not a mapping; give CTKD's settings, e.g. {owner}.curriculum.variant=global"
        )
    args = {str(k): v for k, v in value.items()}
    check_arguments(CurriculumTemperature, args, f"{owner}.curriculum")
    return CurriculumTemperature(**args)
