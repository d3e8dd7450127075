"""Feature-based terms: the student matches the teacher's intermediate feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, PositiveFloat
from kdlab.errors import KdlabError
from kdlab.losses import at_loss, hint_loss
from kdlab.methods.base import FeatureTerm, StepOutputs

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def regressor(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """FitNets' learnable regressor from a student feature shape to a teacher one (no batch dim).

    Maps of the same rank get RepDistiller's ``ConvReg`` (conv -> BN -> ReLU): a stride-2 conv
    when the student map is twice as large, a transposed conv when half as large, otherwise
    a valid conv of kernel 1 + s - t. Anything else (vectors, ranks that differ) is
    flattened into a linear map.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    dims = len(s) - 1
    if len(s) == len(t) and dims in CONV:
        (s_c, *s_sp), (t_c, *t_sp) = s, t
        if all(a == 2 * b for a, b in zip(s_sp, t_sp)):
            conv = CONV[dims](s_c, t_c, 3, stride=2, padding=1)
        elif all(2 * a == b for a, b in zip(s_sp, t_sp)):
            conv = CONV_T[dims](s_c, t_c, 4, stride=2, padding=1)
        elif all(a >= b for a, b in zip(s_sp, t_sp)):
            conv = CONV[dims](s_c, t_c, tuple(1 + a - b for a, b in zip(s_sp, t_sp)))
        else:
            raise KdlabError(f"FitNet cannot map student features {s} to teacher features {t}; tap other stages")
        return nn.Sequential(conv, BN[dims](t_c), nn.ReLU())
    return nn.Sequential(
        nn.Flatten(), nn.Linear(int(torch.tensor(s).prod()), int(torch.tensor(t).prod())), nn.Unflatten(1, t)
    )


class FitNet(FeatureTerm):
    """Romero et al. (2015): the student's hint-stage features, through a learnable regressor,
    regress the teacher's (trained jointly, as RepDistiller). Default taps: stage
    ``hint_stage`` (0-based) of each model's feature stages."""

    def __init__(
        self,
        weight: NonNegativeFloat = 100.0,
        hint_stage: int = 1,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.hint_stage = hint_stage
        self.regressors = nn.ModuleList()

    def default_taps(self, student_stages, teacher_stages):
        def pick(stages: list[str]) -> list[str]:
            if not stages:
                return []
            if not -len(stages) <= self.hint_stage < len(stages):
                raise KdlabError(f"FitNet hint_stage={self.hint_stage}, but a model has only stages {stages}")
            return [stages[self.hint_stage]]

        return pick(student_stages), pick(teacher_stages)

    def build(self, student_feats, teacher_feats):
        self.regressors = nn.ModuleList(
            regressor(student_feats[s].shape[1:], teacher_feats[t].shape[1:])
            for s, t in zip(self.student_taps, self.teacher_taps)
        )

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(hint_loss(reg(fs), ft) for reg, (fs, ft) in zip(self.regressors, self.pairs(out)))


class AT(FeatureTerm):
    """Zagoruyko & Komodakis (2017): attention maps of paired stages, summed over pairs (as
    RepDistiller). Default taps: the last min(n_student, n_teacher) feature stages of each."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1000.0,
        p: PositiveFloat = 2.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.p = p

    def default_taps(self, student_stages, teacher_stages):
        # a side given explicitly arrives with no stages: pair as many of the other side's stages
        k = min(len(student_stages) or len(self.student_taps), len(teacher_stages) or len(self.teacher_taps))
        return student_stages[len(student_stages) - k :], teacher_stages[len(teacher_stages) - k :]

    def build(self, student_feats, teacher_feats):
        for path, f in [
            *((p, student_feats[p]) for p in self.student_taps),
            *((p, teacher_feats[p]) for p in self.teacher_taps),
        ]:
            if f.dim() not in (3, 4):
                raise KdlabError(
                    f"AT needs spatial feature maps (b, c, L) or (b, c, h, w); tap '{path}' gives {tuple(f.shape)}. "
                    "Use a convolutional student and teacher, or tap other modules"
                )

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(at_loss(fs, ft, self.p) for fs, ft in self.pairs(out))
