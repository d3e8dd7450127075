"""Feature-based terms: the student matches the teacher's intermediate feature maps.

A ViT's tapped blocks give token sequences (b, n, d) (``kdlab.models.vit.is_token_sequence``), not
feature maps: FitNet takes them (a linear regressor on d per token), as do SP, PKT, RKD, CC and CRD
(``kdlab.methods.relation``: they flatten each sample); AT, VID, NST, FSP and the connector terms
(AB, FT, OFD, ReviewKD) refuse them in one line (``refuse_token_sequences``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, NonNegativeInt, PositiveFloat
from kdlab.errors import KdlabError
from kdlab.losses import at_loss, hint_loss
from kdlab.losses.feature import fsp_loss, match_spatial, nst_loss, vid_log_scale, vid_loss
from kdlab.methods.base import FeatureTerm, InitPhase, StepOutputs, feature_modules
from kdlab.models import INPUT, feature_stages, zoo
from kdlab.models.cifar import VGG, MobileNetV2
from kdlab.models.vit import is_token_sequence

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def conv_connector(method: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """The convolution of RepDistiller's ``ConvReg`` from a student map shape (c, *spatial) to a
    teacher one, 1-D or 2-D: a stride-2 conv when the student map is twice as large, a transposed
    conv when half as large, otherwise a valid conv of kernel 1 + s - t."""
    (s_c, *s_sp), (t_c, *t_sp) = student_shape, teacher_shape
    dims = len(s_sp)
    if all(a == 2 * b for a, b in zip(s_sp, t_sp)):
        return CONV[dims](s_c, t_c, 3, stride=2, padding=1)
    if all(2 * a == b for a, b in zip(s_sp, t_sp)):
        return CONV_T[dims](s_c, t_c, 4, stride=2, padding=1)
    if all(a >= b for a, b in zip(s_sp, t_sp)):
        return CONV[dims](s_c, t_c, tuple(1 + a - b for a, b in zip(s_sp, t_sp)))
    raise KdlabError(
        f"{method} cannot map student features {tuple(student_shape)} to teacher features "
        f"{tuple(teacher_shape)}; tap other stages"
    )


#: The terms that take a ViT's token sequences (b, n, d) as features
TOKEN_TERMS = "FitNet, SP, PKT, RKD, CC, CRD"


def refuse_token_sequences(method: str, feats: dict[str, Tensor], paths: Sequence[str]) -> None:
    """One-line refusal of a tapped ViT token sequence (b, n, d) by a term that needs feature maps."""
    for path in paths:
        if is_token_sequence(feats[path]):
            raise KdlabError(
                f"{method} needs feature maps, but tap '{path}' gives a ViT token sequence (b, n, d) "
                f"{tuple(feats[path].shape)}; the terms that take token sequences: {TOKEN_TERMS}"
            )


def regressor(student_shape: Sequence[int], teacher_shape: Sequence[int], tokens: bool = False) -> nn.Module:
    """FitNets' learnable regressor from a student feature shape to a teacher one (no batch dim).

    Maps of the same rank get RepDistiller's ``ConvReg`` (``conv_connector`` -> BN -> ReLU).
    ``tokens`` (a ViT's token sequences on both sides, (n, d_s) -> (n, d_t), as many tokens): a
    linear map of each token's embedding, d_s -> d_t (kdlab's choice; FitNets has no ViT).
    Anything else (vectors, ranks that differ, token counts that differ) is flattened into a
    linear map.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if tokens and len(s) == len(t) == 2 and s[0] == t[0]:
        return nn.Linear(s[1], t[1])
    if len(s) == len(t) and len(s) - 1 in CONV and not tokens:
        return nn.Sequential(conv_connector("FitNet", s, t), BN[len(s) - 1](t[0]), nn.ReLU())
    n_in, n_out = int(torch.tensor(s).prod()), int(torch.tensor(t).prod())
    if n_in * n_out > MAX_DENSE_REGRESSOR:  # e.g. a ViT's tokens onto a CNN's map: hundreds of millions
        raise KdlabError(
            f"FitNet would regress student features {s} onto teacher features {t} with a dense layer of "
            f"{n_in * n_out:,} weights; tap features of the same kind on both sides, e.g. "
            "method.terms.fitnet.student_taps=[pre_logits] method.terms.fitnet.teacher_taps=[pre_logits]"
        )
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, n_out), nn.Unflatten(1, t))


#: The most weights a flattened FitNet regressor may have (features of different kinds on the two sides).
MAX_DENSE_REGRESSOR = 50_000_000


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
                raise KdlabError(
                    f"FitNet hint_stage={self.hint_stage}, but a model has only stages {stages}; "
                    f"set method.terms.fitnet.hint_stage to 0..{len(stages) - 1}"
                )
            return [stages[self.hint_stage]]

        return pick(student_stages), pick(teacher_stages)

    def build(self, student_feats, teacher_feats):
        self.regressors = nn.ModuleList(
            regressor(
                student_feats[s].shape[1:],
                teacher_feats[t].shape[1:],
                tokens=is_token_sequence(student_feats[s]) or is_token_sequence(teacher_feats[t]),
            )
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
        return self.last_stage_pairs(student_stages, teacher_stages)

    def build(self, student_feats, teacher_feats):
        refuse_token_sequences("AT", student_feats, self.student_taps)
        refuse_token_sequences("AT", teacher_feats, self.teacher_taps)
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


def _check_maps(term: FeatureTerm, student_feats, teacher_feats, ranks: tuple[int, ...], need: str) -> None:
    """One-line refusal of tapped features whose rank the term cannot take, of paired maps of different
    ranks, or of a ViT's token sequences."""
    name = type(term).__name__
    refuse_token_sequences(name, student_feats, term.student_taps)
    refuse_token_sequences(name, teacher_feats, term.teacher_taps)
    for s, t in zip(term.student_taps, term.teacher_taps):
        for path, f in ((s, student_feats[s]), (t, teacher_feats[t])):
            if f.dim() not in ranks:
                raise KdlabError(
                    f"{name} needs {need}; tap '{path}' gives {tuple(f.shape)}. "
                    "Use a convolutional student and teacher, or tap other modules"
                )
        if student_feats[s].dim() != teacher_feats[t].dim():
            raise KdlabError(
                f"{name} pairs maps of one rank; student tap '{s}' gives {tuple(student_feats[s].shape)}, "
                f"teacher tap '{t}' gives {tuple(teacher_feats[t].shape)}"
            )


class VIDRegressor(nn.Module):
    """VID's regressor of one stage pair (RepDistiller ``VIDLoss``): 1x1 conv -> ReLU -> 1x1 conv
    -> ReLU -> 1x1 conv (no biases; ``mid`` channels inside, the teacher's in RepDistiller), the
    predicted mean; and ``log_scale`` (one per target channel), the variance softplus(alpha) + eps,
    initialised to ``init_pred_var``. ``dims`` 1 / 2 use Conv1d / Conv2d, 0 (vectors) Linear
    layers, a 1x1 convolution with no positions."""

    def __init__(self, dims: int, c_in: int, c_mid: int, c_out: int, init_pred_var: float, eps: float):
        super().__init__()

        def layer(i: int, o: int) -> nn.Module:
            return nn.Linear(i, o, bias=False) if dims == 0 else CONV[dims](i, o, 1, bias=False)

        self.regressor = nn.Sequential(
            layer(c_in, c_mid), nn.ReLU(), layer(c_mid, c_mid), nn.ReLU(), layer(c_mid, c_out)
        )
        self.log_scale = nn.Parameter(torch.full((c_out,), vid_log_scale(init_pred_var, eps)))

    def forward(self, x: Tensor) -> Tensor:
        return self.regressor(x)


class VID(FeatureTerm):
    """Ahn et al. (2019): the student's stage maps, through learnable regressors, give the mean
    of a Gaussian (learnable per-channel variance) that should explain the teacher's maps; the
    negative log-likelihoods are summed over stage pairs (RepDistiller ``VIDLoss`` on
    ``feat_s[1:-1]`` / ``feat_t[1:-1]``, the regressors trained with the student). The larger map
    of a pair is pooled to the other's size before the regressor (as RepDistiller). Default taps:
    the last min(n_student, n_teacher) feature stages of each; maps (b, c, L), (b, c, h, w) or
    vectors (b, c)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        init_pred_var: PositiveFloat = 5.0,
        eps: PositiveFloat = 1e-5,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        if init_pred_var <= eps:
            raise KdlabError(
                f"VID init_pred_var={init_pred_var} must exceed eps={eps} (the variance is softplus + eps)"
            )
        self.init_pred_var, self.eps = init_pred_var, eps
        self.regressors = nn.ModuleList()

    def default_taps(self, student_stages, teacher_stages):
        return self.last_stage_pairs(student_stages, teacher_stages)

    def build(self, student_feats, teacher_feats):
        _check_maps(self, student_feats, teacher_feats, (2, 3, 4), "feature maps (b, c, L), (b, c, h, w) or vectors")
        self.regressors = nn.ModuleList()
        for s, t in zip(self.student_taps, self.teacher_taps):
            fs, ft = student_feats[s], teacher_feats[t]
            c_s, c_t = fs.shape[1], ft.shape[1]
            self.regressors.append(VIDRegressor(fs.dim() - 2, c_s, c_t, c_t, self.init_pred_var, self.eps))

    def loss(self, out: StepOutputs) -> Tensor:
        total = out.student_logits.new_zeros(())
        for reg, (fs, ft) in zip(self.regressors, self.pairs(out)):
            fs, ft = match_spatial(fs, ft) if fs.dim() > 2 else (fs, ft)
            total = total + vid_loss(reg(fs), ft, reg.log_scale, self.eps)
        return total

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init_pred_var={self.init_pred_var}, eps={self.eps}"


class NST(FeatureTerm):
    """Huang & Wang (2017): polynomial-kernel MMD between the L2-normalised channel maps
    (neurons) of paired stages, summed over pairs (RepDistiller ``NSTLoss`` on ``feat_s[1:-1]`` /
    ``feat_t[1:-1]``). Default taps: the last min(n_student, n_teacher) feature stages of each;
    needs spatial maps (b, c, L) or (b, c, h, w)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 50.0,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)

    def default_taps(self, student_stages, teacher_stages):
        return self.last_stage_pairs(student_stages, teacher_stages)

    def build(self, student_feats, teacher_feats):
        _check_maps(self, student_feats, teacher_feats, (3, 4), "spatial feature maps (b, c, L) or (b, c, h, w)")

    def loss(self, out: StepOutputs) -> Tensor:
        return sum(nst_loss(fs, ft) for fs, ft in self.pairs(out))


#: RepDistiller's ``f0`` in the kdlab CIFAR zoo where it is not the first feature stage's input:
#: MobileNetV2's stem (``conv1``; its first feature stage, ``blocks.1``, follows ``blocks.0``) and
#: VGG's first block before its max-pooling (``block0``).
STEMS: dict[type, str] = {MobileNetV2: "conv1", VGG: "block0"}


def stem_tap(model: nn.Module, stages: list[str]) -> str | None:
    """The tap of RepDistiller's ``f0``, the stem's output: the model's ``stem_tap`` attribute if it
    declares one (``""``: none), ``STEMS``, none for kdlab's MNIST-1D / digits nets (their first
    stage is their first layer), else the first feature stage's input (``<stage>:input``: ResNets,
    WRNs, ShuffleNets, ResNet50 and timm models)."""
    declared = getattr(model, "stem_tap", None)
    if declared is not None:
        return declared or None
    if type(model) in STEMS:
        return STEMS[type(model)]
    if type(model).__module__ == zoo.__name__:
        return None
    return stages[0] + INPUT


def fsp_stages(model: nn.Module, owner: str = "model") -> list[str]:
    """The maps FSP pairs, RepDistiller's ``feat[:-1]``: the stem's output (``stem_tap``), then the
    feature stages."""
    stages = feature_stages(model, owner)
    stem = stem_tap(model, stages)
    return [stem, *stages] if stem and stem != stages[0] else stages


class FSP(FeatureTerm):
    """Yim et al. (2017): the student's FSP matrices (Gram matrices of consecutive maps) regress
    the teacher's. As RepDistiller (``FSP`` on ``feat[:-1]``, ``helper/pretrain.py``), this is an
    initialisation: the student's feature modules (every child but the classifier) train on the
    summed FSP losses for ``init_epochs`` (SGD, lr ``init_lr``, momentum 0.9, weight decay 5e-4,
    no schedule; RepDistiller: 30 epochs at its ``learning_rate`` 0.05, 0.01 for MobileNetV2 and
    ShuffleNet students), then the student trains on the other terms alone: this term's loss is 0
    in the main phase (RepDistiller ``loss_kd = 0``), whatever its ``weight`` (kept as the script's
    ``-b 50``). The paper's second stage trains on the task loss alone too.

    Default taps: each model's stem then feature stages (``fsp_stages``). The FSP matrices are
    compared entry by entry, so the student's and teacher's maps need the same channels, map by
    map (as RepDistiller requires): a same-family pair such as resnet32x4 -> resnet8x4."""

    def __init__(
        self,
        weight: NonNegativeFloat = 50.0,
        init_epochs: NonNegativeInt = 30,
        init_lr: PositiveFloat = 0.05,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.init_epochs, self.init_lr = init_epochs, init_lr

    def select_taps(self, student, teacher):
        self.student_taps = self.student_taps or fsp_stages(student, "student")
        self.teacher_taps = self.teacher_taps or fsp_stages(teacher, "teacher")
        if len(self.student_taps) != len(self.teacher_taps) or len(self.student_taps) < 2:
            raise KdlabError(
                f"FSP pairs consecutive maps: give as many student taps {self.student_taps} as teacher taps "
                f"{self.teacher_taps}, at least 2"
            )

    def build(self, student_feats, teacher_feats):
        _check_maps(self, student_feats, teacher_feats, (3, 4), "spatial feature maps (b, c, L) or (b, c, h, w)")
        c_s = [student_feats[p].shape[1] for p in self.student_taps]
        c_t = [teacher_feats[p].shape[1] for p in self.teacher_taps]
        if c_s != c_t:
            raise KdlabError(
                f"FSP needs student and teacher maps of the same channels (as RepDistiller), got student {c_s} "
                f"at {self.student_taps} and teacher {c_t} at {self.teacher_taps}; pair models of one family and width"
            )

    def loss(self, out: StepOutputs) -> Tensor:
        return out.student_logits.new_zeros(())  # RepDistiller: loss_kd = 0 after the initialisation

    def init_phase(self) -> InitPhase:
        return InitPhase(epochs=self.init_epochs, lr=self.init_lr)

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return feature_modules(student)

    def init_loss(self, out: StepOutputs) -> Tensor:
        return fsp_loss(
            [out.student_feats[p] for p in self.student_taps], [out.teacher_feats[p] for p in self.teacher_taps]
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, init_epochs={self.init_epochs}, init_lr={self.init_lr}"
