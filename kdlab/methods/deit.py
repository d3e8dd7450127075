"""DeiT's distillation through attention (Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, ICML 2021,
"Training data-efficient image transformers & distillation through attention").

The student is a ViT with a second prefix token, the distillation token, and a head of its own on
it (timm's ``VisionTransformerDistilled``: ``deit_*_distilled_*``). In training (timm's
``set_distilled_training(True)``, train mode) it returns both heads' logits: the class head
learns from the labels (the ``CrossEntropy`` term, weight 1 - alpha), the distillation head from
the teacher (``DistillationToken``, weight alpha); the offline strategy splits the two into
``StepOutputs.student_logits`` / ``student_dist_logits``. In evaluation the model returns the mean
of the two heads' logits (timm's ``forward_head``), DeiT's late fusion.
"""

from __future__ import annotations

from typing import Literal

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, PositiveFloat
from kdlab.errors import KdlabError
from kdlab.methods.base import StepOutputs, Term


def deit_distillation_loss(dist_logits: Tensor, teacher_logits: Tensor, kind: str, temperature: float) -> Tensor:
    """The distillation part of DeiT's ``DistillationLoss`` (facebookresearch/deit losses.py) on the
    student's distillation-token logits.

    ``hard``: cross-entropy with the teacher's argmax (its first maximum on ties), no label
    smoothing (the paper also mentions smoothing the hard teacher label; the code does not).
    ``soft``: KL(teacher || student) of the logits softened by T, summed over every element and
    divided by ``dist_logits.numel()`` = b x c, not by b (the authors' "legacy PyTorch behaviour",
    deit issue 61), times T^2: the soft loss is 1/c of Hinton's batch-mean KD. ``(b, c), (b, c) -> ()``
    """
    if kind == "hard":
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
    log_p = F.log_softmax(dist_logits / temperature, dim=1)  # (b, c)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)  # (b, c)
    kl = F.kl_div(log_p, log_q, reduction="sum", log_target=True)
    return kl * (temperature * temperature) / dist_logits.numel()


def distilled_archs() -> list[str]:
    """timm's DeiT models with a distillation token."""
    return timm.list_models("deit_*_distilled_*")


def require_distillation_token(model: nn.Module, role: str) -> None:
    """One ``KdlabError`` line unless ``model`` has a distillation token and its head: timm's
    ``set_distilled_training`` and ``head_dist`` (``VisionTransformerDistilled``)."""
    has_switch = callable(getattr(model, "set_distilled_training", None))
    if not has_switch or not isinstance(getattr(model, "head_dist", None), nn.Module):
        name = getattr(model, "kdlab_arch", None) or type(model).__name__
        raise KdlabError(
            f"the {role} ({name}) has no distillation token, which the DeiT term DistillationToken trains; use "
            f"one of timm's deit_*_distilled_* models ({', '.join(distilled_archs())}), e.g. "
            f"student=deit_tiny_distilled or {role}.arch=deit_tiny_distilled_patch16_224"
        )


class DistillationToken(Term):
    """DeiT (Touvron et al., ICML 2021): the student's distillation-token head learns the teacher's
    prediction, ``kind`` ``hard`` (cross-entropy with the teacher's argmax; the paper's best, DeiT's
    choice for its distilled models) or ``soft`` (KL at ``temperature``); exactly the distillation
    part of DeiT's ``DistillationLoss`` (``deit_distillation_loss``, its numel normalisation
    included). Its weight is DeiT's alpha (``--distillation-alpha``, 0.5), the cross-entropy term's
    1 - alpha (conf/method/deit.yaml). Needs a student with a distillation token
    (``deit_*_distilled_*``; ``require_distillation_token``), whose training output the strategy
    splits into the class head's logits and the distillation head's."""

    distillation_token = True

    def __init__(
        self,
        weight: NonNegativeFloat = 0.5,
        kind: Literal["hard", "soft"] = "hard",
        temperature: PositiveFloat = 1.0,
    ):
        super().__init__(weight)
        self.kind, self.temperature = kind, float(temperature)

    def loss(self, out: StepOutputs) -> Tensor:
        if out.student_dist_logits is None:
            raise KdlabError(
                "DistillationToken reads the student's distillation-token logits, which this step has none of; "
                "train a deit_*_distilled_* student under strategy=offline"
            )
        return deit_distillation_loss(out.student_dist_logits, out.teacher_logits, self.kind, self.temperature)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, kind={self.kind}, temperature={self.temperature}"
