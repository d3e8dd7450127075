"""Terms with learned connectors between the student's and the teacher's feature maps: AB, FT,
OFD and ReviewKD. Their connectors are built in ``build`` from the probed feature shapes and
work on 1-D (b, c, L) and 2-D (b, c, h, w) maps.

AB and FT train part of themselves before the student's training (``init_phase``, RepDistiller's
``init``); OFD and ReviewKD train their connectors with the student. AB, OFD and the teacher side
of ReviewKD read pre-activation (pre-ReLU) maps: their default taps are the models'
``preact_stages``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from kdlab.errors import KdlabError
from kdlab.losses.connector import ab_loss, ft_loss, hcl_loss, ofd_loss, ofd_margin
from kdlab.methods.base import FeatureTerm, InitPhase, StepOutputs, feature_modules, last_pairs
from kdlab.methods.feature import BN, CONV, CONV_T, conv_connector, refuse_token_sequences
from kdlab.models import PRE_LOGITS, bn_before_relu, feature_stages, preact_stages


def require_maps(method: str, feats: dict[str, Tensor], paths: Sequence[str]) -> int:
    """The spatial rank (1 or 2) shared by the tapped maps ``paths``; one KdlabError line otherwise (a
    ViT's token sequences (b, n, d) included)."""
    refuse_token_sequences(method, feats, paths)
    dims = set()
    for path in paths:
        f = feats[path]
        if f.dim() not in (3, 4):
            raise KdlabError(
                f"{method} needs spatial feature maps (b, c, L) or (b, c, h, w); tap '{path}' gives "
                f"{tuple(f.shape)}. Use a convolutional student and teacher, or tap other modules"
            )
        dims.add(f.dim() - 2)
    if len(dims) > 1:
        raise KdlabError(f"{method} pairs maps of one kind, 1-D or 2-D; taps {list(paths)} mix them")
    return dims.pop()


class PreactTerm(FeatureTerm):
    """A feature term whose default taps pair the last stages of both models, pre-activation
    (``preact_stages``) on the sides named in ``preact``."""

    preact: tuple[bool, bool] = (True, True)  # (student, teacher)

    def stages(self, model: nn.Module, owner: str, pre: bool) -> list[str]:
        return preact_stages(model, owner) if pre else feature_stages(model, owner)

    def default_taps(self, student_stages, teacher_stages):
        return self.last_stage_pairs(student_stages, teacher_stages)

    def select_taps(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if not self.student_taps or not self.teacher_taps:
            s = self.stages(student, "student", self.preact[0]) if not self.student_taps else []
            t = self.stages(teacher, "teacher", self.preact[1]) if not self.teacher_taps else []
            s_default, t_default = self.default_taps(s, t)
            self.student_taps = self.student_taps or s_default
            self.teacher_taps = self.teacher_taps or t_default
        super().select_taps(student, teacher)  # both given now: checks the pairing


def conv_reg(method: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Sequential:
    """RepDistiller's ``ConvReg`` without its ReLU (conv -> BN), as its AB ``Connector`` uses."""
    return nn.Sequential(
        conv_connector(method, student_shape, teacher_shape), BN[len(student_shape) - 1](teacher_shape[0])
    )


# ---------------------------------------------------------------------------------------------
# AB
# ---------------------------------------------------------------------------------------------


class AB(PreactTerm):
    """Heo et al. (AAAI 2019), activation boundaries, as RepDistiller (``--distill abound``).

    The initialisation phase (``init_epochs`` of SGD at ``init_lr``, momentum 0.9, weight decay
    5e-4) trains the connectors and the student's feature modules (every child but the
    classifier, RepDistiller's ``get_feat_modules``) on ``ab_loss`` between the student's
    pre-activation stages, through the connectors, and the teacher's. The main phase is
    cross-entropy alone: this term's main loss is 0, as RepDistiller's ``loss_kd = 0`` (its
    ``-b 1`` weighs nothing); the connectors are not used after the phase.

    Connectors as RepDistiller's ``Connector``: none (identity) where the student map has the
    teacher's shape, else conv -> BN (``ConvReg`` without ReLU). Default taps: the last
    min(n_s, n_t) pre-activation stages of each (RepDistiller's ``feat[1:-1]`` with
    ``preact=True``; its ``Connector`` requires equally many). RepDistiller's init learning
    rate is the student's (0.05; 0.01 for MobileNetV2 / ShuffleNet students).
    """

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        margin: PositiveFloat = 1.0,
        init_epochs: NonNegativeInt = 30,
        init_lr: PositiveFloat = 0.05,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.margin, self.init_epochs, self.init_lr = margin, init_epochs, init_lr
        self.connectors = nn.ModuleList()

    def build(self, student_feats, teacher_feats):
        require_maps("AB", {**student_feats, **teacher_feats}, [*self.student_taps, *self.teacher_taps])
        connectors = []
        for s, t in zip(self.student_taps, self.teacher_taps):
            s_shape, t_shape = tuple(student_feats[s].shape[1:]), tuple(teacher_feats[t].shape[1:])
            connectors.append(nn.Identity() if s_shape == t_shape else conv_reg("AB", s_shape, t_shape))
        self.connectors = nn.ModuleList(connectors)

    def init_phase(self) -> InitPhase | None:
        return InitPhase(self.init_epochs, self.init_lr) if self.init_epochs > 0 else None

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self, *feature_modules(student)]

    def init_loss(self, out: StepOutputs) -> Tensor:
        pairs = self.pairs(out)
        return ab_loss([c(fs) for c, (fs, _) in zip(self.connectors, pairs)], [ft for _, ft in pairs], self.margin)

    def loss(self, out: StepOutputs) -> Tensor:
        return out.student_logits.new_zeros(())  # the transfer happened in the initialisation phase

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, init_epochs={self.init_epochs}, init_lr={self.init_lr}"


# ---------------------------------------------------------------------------------------------
# FT
# ---------------------------------------------------------------------------------------------


def _block(dims: int, cin: int, cout: int, bn: bool, transposed: bool = False) -> list[nn.Module]:
    conv = (CONV_T if transposed else CONV)[dims](cin, cout, 3, 1, 1)
    return [conv, *([BN[dims](cout)] if bn else []), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """FT's paraphraser of the teacher's map, as RepDistiller's ``Paraphraser`` (no BN): an
    encoder of three 3x3 convs (c -> c -> k c -> k c) and a decoder of three 3x3 transposed
    convs back to c channels, each followed by LeakyReLU(0.1). (b, c, *spatial) in and out."""

    def __init__(self, dims: int, channels: int, factor_channels: int):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(*_block(dims, c, c, False), *_block(dims, c, k, False), *_block(dims, k, k, False))
        self.decoder = nn.Sequential(
            *_block(dims, k, k, False, True), *_block(dims, k, c, False, True), *_block(dims, c, c, False, True)
        )

    def forward(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """(factor (b, k c, *spatial), reconstruction (b, c, *spatial))."""
        factor = self.encoder(feat)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT's translator of the student's map to a factor, as RepDistiller's ``Translator``: three
    3x3 convs (c_s -> c_s -> k c_t -> k c_t), each followed by BN and LeakyReLU(0.1)."""

    def __init__(self, dims: int, channels: int, factor_channels: int):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(*_block(dims, c, c, True), *_block(dims, c, k, True), *_block(dims, k, k, True))

    def forward(self, feat: Tensor) -> Tensor:
        return self.encoder(feat)


class FT(FeatureTerm):
    """Kim et al. (NeurIPS 2018), factor transfer, as RepDistiller (``--distill factor``).

    The initialisation phase trains the paraphraser alone to reconstruct the teacher's map
    (MSE, ``init_epochs`` of SGD at ``init_lr``, momentum 0.9, weight decay 5e-4); it is then
    frozen (and in eval mode, as RepDistiller's). In the main phase the translator trains with
    the student on ``ft_loss`` between the translated student map and the paraphrased teacher
    map. ``rate`` is the paraphrase rate k (factor channels int(k c_t)). Default taps: the last
    feature stage of each model (RepDistiller's ``feat[-2]``). RepDistiller's init learning rate
    is 0.01 for ResNet / WRN students and the student's otherwise (0.05; 0.01 for MobileNetV2 /
    ShuffleNet students).
    """

    def __init__(
        self,
        weight: NonNegativeFloat = 200.0,
        rate: PositiveFloat = 0.5,
        init_epochs: NonNegativeInt = 30,
        init_lr: PositiveFloat = 0.05,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.rate, self.init_epochs, self.init_lr = rate, init_epochs, init_lr
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def default_taps(self, student_stages, teacher_stages):
        return student_stages[-1:], teacher_stages[-1:]

    def select_taps(self, student, teacher):
        super().select_taps(student, teacher)
        if len(self.student_taps) != 1:
            raise KdlabError(f"FT transfers one factor, got taps {self.student_taps} / {self.teacher_taps}")

    def build(self, student_feats, teacher_feats):
        (s,), (t,) = self.student_taps, self.teacher_taps
        dims = require_maps("FT", {**student_feats, **teacher_feats}, [s, t])
        s_c, t_c = student_feats[s].shape[1], teacher_feats[t].shape[1]
        k = int(t_c * self.rate)
        if k < 1:
            raise KdlabError(f"FT rate={self.rate} gives no factor channel for {t_c} teacher channels; raise the rate")
        self.paraphraser = Paraphraser(dims, t_c, k)
        self.translator = Translator(dims, s_c, k)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.paraphraser is not None:  # trained only in the initialisation phase (which sets its mode)
            self.paraphraser.eval()
        return self

    def init_phase(self) -> InitPhase | None:
        return InitPhase(self.init_epochs, self.init_lr) if self.init_epochs > 0 else None

    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        return [self.paraphraser]

    def init_loss(self, out: StepOutputs) -> Tensor:
        ((_, ft),) = self.pairs(out)
        _, reconstruction = self.paraphraser(ft)
        return F.mse_loss(reconstruction, ft)

    def loss(self, out: StepOutputs) -> Tensor:
        ((fs, ft),) = self.pairs(out)
        with torch.no_grad():  # the paraphraser is frozen after its phase
            factor_t = self.paraphraser.encoder(ft)
        return ft_loss(self.translator(fs), factor_t)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rate={self.rate}, init_epochs={self.init_epochs}, init_lr={self.init_lr}"


# ---------------------------------------------------------------------------------------------
# OFD
# ---------------------------------------------------------------------------------------------


class OFD(PreactTerm):
    """Heo et al. (ICCV 2019), overhaul of feature distillation, as mdistiller (``OFD``).

    Each student pre-ReLU stage goes through a connector (conv of ``kernel_size`` without bias
    -> BN, conv weights N(0, 2 / (k^d c_t)), trained with the student) to the teacher's channels;
    ``ofd_loss`` compares it with the teacher's pre-ReLU map against per-channel margins. Default
    taps: the last min(n_s, n_t) pre-activation stages of each (mdistiller's ``_align_list``).

    Margins (``ofd_margin``) come from the BatchNorm before each teacher ReLU (weight as std,
    bias as mean; ``bn_before_relu``). kdlab extension: for a teacher stage with no such BN (a
    tap that is not a pre-activation stage, or a teacher with no BN, e.g. MNIST-1D's cnn1d) the
    channel's mean and (population) std are measured on the teacher's pre-activations of the
    first training batch (over samples and positions) and fed to the same formula; the
    measured margins are kept as buffers (and in checkpoints).

    As mdistiller's ``OFD.train`` (and clovaai/overhaul-distillation's training loop), the
    teacher is in train mode while the student trains, so its BatchNorms normalise with batch
    statistics (``teacher_train_mode``); kdlab restores its running statistics after the fit,
    so the teacher evaluated and cached afterwards is the one loaded.
    """

    teacher_train_mode = True

    def __init__(
        self,
        weight: NonNegativeFloat = 0.001,
        kernel_size: PositiveInt = 1,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.kernel_size = kernel_size
        self.connectors = nn.ModuleList()
        self._bn_margins: list[Tensor | None] = []

    def select_taps(self, student, teacher):
        super().select_taps(student, teacher)
        try:
            bn_of = dict(zip(preact_stages(teacher, "teacher"), bn_before_relu(teacher, "teacher")))
        except KdlabError:  # no BN before the ReLUs: margins measured on the first batch
            bn_of = {}
        modules = dict(teacher.named_modules())
        margins = []
        for tap in self.teacher_taps:
            bn = modules.get(bn_of.get(tap, ""))
            affine = isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.weight is not None
            margins.append(ofd_margin(bn.weight, bn.bias).float() if affine else None)
        self._bn_margins = margins

    def build(self, student_feats, teacher_feats):
        dims = require_maps("OFD", {**student_feats, **teacher_feats}, [*self.student_taps, *self.teacher_taps])
        connectors = []
        for s, t in zip(self.student_taps, self.teacher_taps):
            s_c, t_c = student_feats[s].shape[1], teacher_feats[t].shape[1]
            conv = CONV[dims](s_c, t_c, self.kernel_size, padding=(self.kernel_size - 1) // 2, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (self.kernel_size**dims * t_c)))
            connectors.append(nn.Sequential(conv, BN[dims](t_c)))
        self.connectors = nn.ModuleList(connectors)
        margins = self._bn_margins or [None] * len(self.teacher_taps)
        for i, (t, m) in enumerate(zip(self.teacher_taps, margins)):
            t_c = teacher_feats[t].shape[1]
            if m is not None and m.shape != (t_c,):
                raise KdlabError(f"OFD: the teacher's BN before '{t}' has {m.numel()} channels, its map {t_c}")
            self.register_buffer(f"margin{i}", m.clone() if m is not None else torch.zeros(t_c))
        self.register_buffer("margin_known", torch.tensor([m is not None for m in margins]))

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(len(self.teacher_taps))]

    @torch.no_grad()
    def measure_margins(self, teacher_feats: Sequence[Tensor]) -> None:
        """Margins of the stages with no BN, from this batch's teacher pre-activations."""
        for i, (t, margin) in enumerate(zip(teacher_feats, self.margins())):
            if not self.margin_known[i]:
                per_channel = t.detach().float().transpose(0, 1).flatten(1)  # (c, b * positions)
                std, mean = per_channel.var(1, unbiased=False).sqrt(), per_channel.mean(1)
                margin.copy_(ofd_margin(std, mean))
                self.margin_known[i] = True

    def loss(self, out: StepOutputs) -> Tensor:
        pairs = self.pairs(out)
        if not bool(self.margin_known.all()):
            self.measure_margins([ft for _, ft in pairs])
        student = [c(fs) for c, (fs, _) in zip(self.connectors, pairs)]
        return ofd_loss(student, [ft for _, ft in pairs], self.margins())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}"


# ---------------------------------------------------------------------------------------------
# ReviewKD
# ---------------------------------------------------------------------------------------------


class ABF(nn.Module):
    """ReviewKD's attention-based fusion, as mdistiller's / dvlab-research's ``ABF``: the student
    map through 1x1 conv -> BN to ``mid`` channels; unless it is the deepest level, fused with
    the (nearest-upsampled) residual of the level below by two sigmoid attention maps (a 1x1
    conv of both, with bias); resized (nearest) to the teacher map's size; the output through
    3x3 conv -> BN to the teacher's channels. Convs ``kaiming_uniform_(a=1)``, no bias."""

    def __init__(self, dims: int, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(CONV[dims](in_channels, mid_channels, 1, bias=False), BN[dims](mid_channels))
        self.conv2 = nn.Sequential(
            CONV[dims](mid_channels, out_channels, 3, padding=1, bias=False), BN[dims](out_channels)
        )
        self.att_conv = nn.Sequential(CONV[dims](2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """x (b, c_in, *spatial), residual (b, mid, *smaller) or None -> (output (b, c_out, *out_size),
        the fused map (b, mid, *out_size): the next level's residual)."""
        x = self.conv1(x)  # (b, mid, *spatial)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, residual], 1))  # (b, 2, *spatial)
            x = x * z[:, 0:1] + residual * z[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _as_map(feat: Tensor, dims: int) -> Tensor:
    """A (b, c) vector as a (b, c, 1...) map of spatial rank ``dims``; maps unchanged."""
    return feat.reshape(*feat.shape[:2], *([1] * dims)) if feat.dim() == 2 else feat


class ReviewKD(PreactTerm):
    """Chen et al. (CVPR 2021), knowledge review, as mdistiller (``ReviewKD``, the DKD paper's table).

    The student's maps, deep to shallow, are fused level by level (``ABF``) so that each output
    reviews the deeper levels; each output, shaped as the teacher's map of its level, is
    compared by ``hcl_loss``. The loss ramps up over ``warmup_epochs`` (factor
    min((epoch + 1) / warmup, 1), mdistiller's 1-based ``epoch / WARMUP_EPOCHS``;
    dvlab-research/ReviewKD uses the 0-based epoch, so its first epoch has no review loss).
    Default taps, as mdistiller with ``STU_PREACT=False``: the student's last min(n_s, n_t)
    feature stages (post-activation) and its pooled feature (``pre_logits``, as a (b, c, 1...)
    map); the teacher's pre-activation stages and its ``pre_logits``. Middle channels:
    min(``max_mid_channel``, the student's pooled-feature channels) (mdistiller fixes 512).
    Shapes and channels come from the probed maps (mdistiller's ``SHAPES``, ``OUT_SHAPES``,
    ``IN_CHANNELS``, ``OUT_CHANNELS``, set by hand per pair there). dvlab-research/ReviewKD never
    puts its teacher in eval mode (BN on batch statistics); mdistiller, followed here, does.
    """

    preact = (False, True)

    def __init__(
        self,
        weight: NonNegativeFloat = 5.0,
        warmup_epochs: NonNegativeInt = 20,
        max_mid_channel: PositiveInt = 512,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.warmup_epochs, self.max_mid_channel = warmup_epochs, max_mid_channel
        self.abfs = nn.ModuleList()
        self.dims = 0

    def default_taps(self, student_stages, teacher_stages):
        given = (max(len(self.student_taps) - 1, 0), max(len(self.teacher_taps) - 1, 0))  # stages of a given side
        s, t = last_pairs(student_stages, teacher_stages, given)
        return (s + [PRE_LOGITS] if student_stages else []), (t + [PRE_LOGITS] if teacher_stages else [])

    def build(self, student_feats, teacher_feats):
        feats = {**student_feats, **teacher_feats}
        # every tap but the pooled feature (pre_logits, a vector taken as a (b, c, 1...) map) is a map
        paths = [p for p in (*self.student_taps, *self.teacher_taps) if p != PRE_LOGITS]
        if not paths:
            raise KdlabError(
                "ReviewKD needs feature-map taps besides pre_logits; name stages in student_taps/teacher_taps"
            )
        self.dims = require_maps("ReviewKD", feats, paths)
        s_maps = [_as_map(student_feats[p], self.dims) for p in self.student_taps]
        t_maps = [_as_map(teacher_feats[p], self.dims) for p in self.teacher_taps]
        mid = min(self.max_mid_channel, s_maps[-1].shape[1])
        n = len(s_maps)
        self.abfs = nn.ModuleList(
            ABF(self.dims, s.shape[1], mid, t.shape[1], fuse=i < n - 1) for i, (s, t) in enumerate(zip(s_maps, t_maps))
        )

    def review(self, student_feats: Sequence[Tensor], teacher_sizes: Sequence[Sequence[int]]) -> list[Tensor]:
        """The fused student maps, shallow to deep, each of its teacher map's shape."""
        results, residual = [], None
        for i in reversed(range(len(student_feats))):  # deep to shallow
            out, residual = self.abfs[i](_as_map(student_feats[i], self.dims), residual, teacher_sizes[i])
            results.insert(0, out)
        return results

    def loss(self, out: StepOutputs) -> Tensor:
        pairs = self.pairs(out)
        teacher = [_as_map(ft, self.dims) for _, ft in pairs]
        student = self.review([fs for fs, _ in pairs], [t.shape[2:] for t in teacher])
        ramp = min((out.epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return ramp * hcl_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, warmup_epochs={self.warmup_epochs}, max_mid_channel={self.max_mid_channel}"
