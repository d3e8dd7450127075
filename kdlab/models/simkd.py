"""SimKD's deployable student, registered as the kdlab zoo arch ``simkd``.

Chen, Mei, Zhang, Wang, Feng & Chen, *Knowledge Distillation with the Reused Teacher Classifier*
(CVPR 2022), code DefangChen/SimKD: the student predicts through a projector and the teacher's
own classifier. ``models/util.py`` ``class SimKD``: the projector (``transfer``) maps the
student's last feature map to the teacher's channels, and at test time (``helper/loops.py``
``validate_distill``) the prediction is ``cls_t(avg_pool(transfer(feat_s[-2])).view(b, -1))``,
``cls_t`` being the teacher's classifier (``model_t.get_feat_modules()[-1]``: ``fc`` of the CIFAR
ResNets, ``classifier`` of the VGGs).

``SimKDStudent`` is that prediction as one model: ``backbone`` (the student without its own
classifier), ``projector`` (the authors' ``transfer``, same layer order and indices: a checkpoint's
``transfer.<i>.*`` is ``projector.<i>.*`` here) and ``head`` (a copy of the teacher's linear
classifier, frozen: the authors' optimizer holds the student and the projector only, so ``cls_t``
never changes). It is what kdlab trains, validates and exports when ``method=simkd``
(``kdlab.methods.simkd.SimKD.deployable``), and ``create_model("simkd", num_classes, input_shape,
student={arch, kwargs}, teacher={arch, kwargs}, factor=2, student_tap=..., teacher_tap=...)``
rebuilds it with the same parameter names (the teacher is built on the meta device, only for its
tap's shape and its classifier's shape), so ``load_weights`` reads an exported ``student.safetensors``.

Differences from the authors' code, none of which changes a CIFAR forward pass:

- spatial alignment compares the first spatial size (H) as the authors do, but pools to the other
  map's full spatial size; the authors pool to ``(H, H)``, the same on square maps;
- 1-D maps ``(b, C, L)`` (MNIST-1D's ConvNets) get the same projector with 1-D layers (kdlab's
  extension; the authors' is 2-D only);
- the student's own classifier is left out (``reset_classifier(0)``); its modules between the tapped
  stage and the classifier still run and are counted (MobileNetV2's and ShuffleNetV2's last 1x1
  conv), as the authors' ``model_s`` runs whole at train and test time; their output is unused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.models import register_model
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.models.factory import create_model
from kdlab.models.taps import FeatureTaps, feature_stages
from kdlab.models.zoo import ZOO

ARCH = "simkd"
CONV = {1: nn.Conv1d, 2: nn.Conv2d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d}


def simkd_projector(in_channels: int, out_channels: int, factor: int = 2, dims: int = 2) -> nn.Sequential:
    """The authors' projector (``SimKD.transfer``, "a bottleneck design to reduce extra parameters"):
    conv1x1(C_s -> C_t // factor) - BN - ReLU - conv3x3(C_t // factor -> C_t // factor, padding 1)
    - BN - ReLU - conv1x1(C_t // factor -> C_t) - BN - ReLU, convolutions without bias, PyTorch's
    default initialisation (the authors set none). The 3x3 convolution is a full one (groups 1):
    the depthwise variant is commented out in the authors' code."""
    mid = out_channels // factor
    if mid < 1:
        raise KdlabError(
            f"SimKD factor={factor} leaves no channels in the projector (teacher map of {out_channels} channels); "
            f"set method.terms.simkd.factor to 1..{out_channels}"
        )
    conv, bn = CONV[dims], BN[dims]
    return nn.Sequential(
        conv(in_channels, mid, 1, bias=False),  # 0
        bn(mid),
        nn.ReLU(inplace=True),
        conv(mid, mid, 3, padding=1, bias=False),  # 3
        bn(mid),
        nn.ReLU(inplace=True),
        conv(mid, out_channels, 1, bias=False),  # 6
        bn(out_channels),
        nn.ReLU(inplace=True),
    )


def student_pool_size(student_size: Sequence[int], teacher_size: Sequence[int]) -> tuple[int, ...] | None:
    """The authors' spatial alignment, student side: when the student map is taller (H_s > H_t) it is
    average-pooled to the teacher's size before the projector; otherwise (None) it enters the projector
    as it is and the teacher map is pooled to its size in the loss."""
    return tuple(int(s) for s in teacher_size) if student_size[0] > teacher_size[0] else None


def project(projector: nn.Module, feat: Tensor, pool_to: Sequence[int] | None) -> Tensor:
    """(b, C_s, *S) -> (b, C_t, *S'): the student map pooled to ``pool_to`` when given, then projected."""
    if pool_to is not None:
        feat = POOL[feat.dim() - 2](feat, tuple(pool_to))
    return projector(feat)


def headless(model: nn.Module) -> nn.Module:
    """``model`` without its classifier (timm's ``reset_classifier(0)``, kdlab's zoo alike), in place;
    a model without ``reset_classifier`` is left whole."""
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(0)
    return model


def plain(value):
    """A JSON-ready copy of model kwargs (OmegaConf containers and tuples as dicts and lists)."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class SimKDStudent(nn.Module):
    """The deployable SimKD student: ``head(avg_pool(projector(pool?(backbone's student_tap map))))``.

    ``backbone`` runs whole; a forward hook records its ``student_tap`` output (``FeatureTaps``).
    In training mode the projected map of the last forward pass is kept in ``last_projection``
    (``pop_projection`` hands it over and forgets it), so that the SimKD term computes its loss on the
    very projection the logits came from: the projector runs once per step. In eval mode nothing is
    kept (validation, export and copies see a pure function of the input).
    ``feature_taps = ("projector",)``: as a teacher, its last feature map is the projected one, which its
    head reads through global average pooling.
    """

    feature_taps = ("projector",)

    def __init__(
        self,
        backbone: nn.Module,
        projector: nn.Module,
        head: nn.Linear,
        student_tap: str,
        pool_to: Sequence[int] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.head = head.requires_grad_(False)  # the teacher's classifier, never trained
        self.student_tap = student_tap
        self.pool_to = tuple(pool_to) if pool_to is not None else None
        self.num_classes, self.num_features = head.out_features, head.in_features
        self.taps = FeatureTaps(backbone, [student_tap], "student")
        self.last_projection: Tensor | None = None

    def project(self, feat: Tensor) -> Tensor:
        return project(self.projector, feat, self.pool_to)

    def forward_features(self, x: Tensor) -> Tensor:
        self.backbone(x)
        proj = self.project(self.taps.pop()[self.student_tap])  # (b, C_t, *S')
        if self.training:
            self.last_projection = proj
        return POOL[proj.dim() - 2](proj, 1).flatten(1)  # (b, C_t): the authors' AdaptiveAvgPool2d((1, 1)) + view

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))  # (b, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def pop_projection(self) -> Tensor | None:
        """The projected map of the last training-mode forward pass (None if there was none since the last pop)."""
        proj, self.last_projection = self.last_projection, None
        return proj

    def extra_repr(self) -> str:
        return f"student_tap={self.student_tap!r}, pool_to={self.pool_to}"


def _spec(value, role: str) -> tuple[str, dict]:
    value = plain(value)
    if isinstance(value, str):
        return value, {}
    if not isinstance(value, Mapping) or not isinstance(value.get("arch"), str):
        raise KdlabError(f"simkd needs {role}={{arch: <name>, kwargs: {{...}}}}, got {value!r}")
    return value["arch"], dict(value.get("kwargs") or {})


@torch.no_grad()
def tap_shape(model: nn.Module, tap: str, input_shape: Sequence[int], owner: str) -> tuple[int, ...]:
    """The shape of ``model``'s ``tap`` output on a dummy batch of two (eval mode; meta models too)."""
    taps = FeatureTaps(model, [tap], owner)
    param = next(model.parameters(), None)
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(2, *input_shape, device=param.device if param is not None else None))
        return tuple(taps.pop()[tap].shape)
    finally:
        taps.remove()
        model.train(was_training)


def _teacher_outline(arch: str, kwargs: dict, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """The teacher, for its shapes only: built on the meta device (no memory, no weights), else on the CPU."""
    try:
        with torch.device("meta"):
            return create_model(arch, num_classes, input_shape, **kwargs)
    except KdlabError:
        raise
    except Exception:  # an operation without a meta kernel
        return create_model(arch, num_classes, input_shape, **kwargs)


def build_simkd(
    student,
    teacher,
    num_classes: int,
    input_shape: Sequence[int],
    factor: int = 2,
    student_tap: str | None = None,
    teacher_tap: str | None = None,
) -> SimKDStudent:
    """Rebuild a ``SimKDStudent`` from its kwargs (untrained weights; load them after)."""
    (s_arch, s_kwargs), (t_arch, t_kwargs) = _spec(student, "student"), _spec(teacher, "teacher")
    backbone = create_model(s_arch, num_classes, input_shape, **s_kwargs)
    outline = _teacher_outline(t_arch, t_kwargs, num_classes, input_shape)
    student_tap = student_tap or feature_stages(backbone, "student")[-1]
    teacher_tap = teacher_tap or feature_stages(outline, "teacher")[-1]
    s_shape = tap_shape(backbone, student_tap, input_shape, "student")
    t_shape = tap_shape(outline, teacher_tap, input_shape, "teacher")
    cls = outline.get_classifier() if callable(getattr(outline, "get_classifier", None)) else None
    if not isinstance(cls, nn.Linear):
        raise KdlabError(f"simkd teacher {t_arch} has no linear classifier to reuse")
    head = nn.Linear(cls.in_features, cls.out_features, bias=cls.bias is not None)
    projector = simkd_projector(s_shape[1], t_shape[1], factor, len(s_shape) - 2)
    model = SimKDStudent(headless(backbone), projector, head, student_tap, student_pool_size(s_shape[2:], t_shape[2:]))
    student, teacher = {"arch": s_arch, "kwargs": s_kwargs}, {"arch": t_arch, "kwargs": t_kwargs}
    return stamp(model, student, teacher, factor, student_tap, teacher_tap)


def stamp(model: SimKDStudent, student: dict, teacher: dict, factor: int, student_tap: str, teacher_tap: str):
    """``model`` with the arch and kwargs that rebuild it (``build_simkd``), as exports record them."""
    model.kdlab_arch = ARCH
    model.kdlab_kwargs = {
        "student": student,
        "teacher": teacher,
        "factor": int(factor),
        "student_tap": student_tap,
        "teacher_tap": teacher_tap,
    }
    return model


@register_model
def simkd(
    pretrained: bool = False,
    *,
    student,
    teacher,
    factor: int = 2,
    student_tap: str | None = None,
    teacher_tap: str | None = None,
    num_classes: int = 100,
    in_chans: int = 3,
    input_size: Sequence[int] = (32, 32),
    **timm_kwargs,
) -> SimKDStudent:
    """SimKD's deployable student (Chen et al., CVPR 2022): ``student`` backbone + projector + the classifier
    of ``teacher`` (``{arch, kwargs}`` each), as ``kdlab.methods.simkd.SimKD`` trains and exports it."""
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        timm_kwargs.pop(k, None)
    if pretrained:
        raise ValueError("simkd has no published weights; load a kdlab student.safetensors instead")
    if timm_kwargs:
        raise TypeError(f"simkd got unexpected arguments {sorted(timm_kwargs)}")
    return build_simkd(student, teacher, num_classes, (in_chans, *input_size), factor, student_tap, teacher_tap)


ZOO.add(ARCH)
