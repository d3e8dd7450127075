"""SimKD (Chen, Mei, Zhang, Wang, Feng & Chen, CVPR 2022, *Knowledge Distillation with the Reused
Teacher Classifier*; code DefangChen/SimKD): the student's last feature map, through a learnable
projector, regresses the teacher's last feature map (one MSE term), and the student predicts
through the projector and the teacher's own classifier.

What the authors' code does (``train_student.py``, ``helper/loops.py``, ``models/util.py``):

- the maps are ``feat_s[-2]`` and ``feat_t[-2]`` of ``forward(x, is_feat=True)``, the last feature
  map before global pooling: kdlab's last feature stage (``feature_taps[-1]`` of the CIFAR zoo, the
  last ``feature_info`` stage of a timm CNN), the default taps here;
- ``SimKD.forward``: if ``H_s > H_t`` the student map is average-pooled to the teacher's size, else
  the teacher map to the student's; the student map goes through ``transfer`` (the projector,
  ``kdlab.models.simkd.simkd_projector``, ``factor`` 2 by default); the loss is ``nn.MSELoss()``
  between the projected student map and the (pooled) teacher map (``simkd_loss``);
- the prediction is ``cls_t(avg_pool(projected).view(b, -1))`` with ``cls_t`` the teacher's
  classifier, in training (the accuracy it logs) and validation. ``cls_t`` is not in the optimizer,
  which holds the student and the projector: the classifier is never trained;
- the published recipe is ``-c 0 -d 0 -b 1``: no cross-entropy, no KD, the SimKD loss alone with
  weight 1 (``conf/method/simkd.yaml``). Their ``-c`` / ``-d`` losses, when non-zero, act on the
  student's *own* classifier (``logit_s`` is replaced by the SimKD prediction only after them). In
  kdlab the trained model is the deployable one (``deployable``): a ``ce`` or ``kd`` term beside
  ``simkd`` acts on its logits, through the teacher's classifier; with the recipe's weights 0 the
  two are the same training.

kdlab's offline strategy replaces the student by ``SimKD.deployable(student, teacher)``, a
``kdlab.models.simkd.SimKDStudent`` (student without its classifier + projector + a frozen copy of
the teacher's classifier), so that training logits, validation, export, parameter counts and latency
all describe the model the authors evaluate. The projector moves into that model; in training mode
it keeps the projected map of its last forward pass, which ``loss`` takes (``pop_projection``): the
projector runs once per step. Without a deployable model (other strategies) the term projects the
tapped student map itself.

Teachers: the classifier must be an ``nn.Linear`` applied to the global average of the tapped map
(checked on a random batch): the CIFAR ResNets, VGGs and ResNet50 of the kdlab zoo, kdlab's
``cnn_*`` ConvNets, timm ResNets. Teachers with a layer between their last stage and the classifier
(WRN's final BN-ReLU, MobileNetV2's and ShuffleNetV2's last 1x1 conv, timm EfficientNets, ConvNeXts)
are refused in one line, naming the tap that would work when one does (``teacher_taps=[relu]`` for a
WRN). The authors' ``get_feat_modules()[-1]`` is not the classifier for those either (their MobileNetV2
and ShuffleNets return a stage there; RepDistiller's WRN tap ``feat[-2]`` is before the BN-ReLU).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.config import NonNegativeFloat, PositiveInt
from kdlab.errors import KdlabError
from kdlab.methods.base import FeatureTerm, StepOutputs
from kdlab.models.simkd import (
    ARCH,
    POOL,
    SimKDStudent,
    headless,
    plain,
    project,
    simkd_projector,
    stamp,
    student_pool_size,
)
from kdlab.models.taps import PRE_LOGITS, FeatureTaps, feature_stages

#: What a teacher must be, for the one-line refusals.
WORKS = (
    "kdlab CIFAR zoo teachers whose last stage feeds the classifier through global pooling (resnet*, vgg*_cifar, "
    "resnet50_cifar), kdlab cnn_* ConvNets, timm CNNs with a linear head on the pooled last stage (resnet*)"
)


def simkd_loss(projected: Tensor, teacher_feat: Tensor) -> Tensor:
    """Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022).

    Mean squared error (over all elements, ``nn.MSELoss()``) between the projected student map
    (b, C_t, *S) and the teacher map (b, C_t, *S_t), the teacher map first average-pooled to the
    projected map's size when they differ (the authors' ``else`` branch: ``H_s <= H_t``; with
    ``H_s > H_t`` the student map was pooled before the projector and the sizes agree).
    """
    if teacher_feat.shape[2:] != projected.shape[2:]:
        teacher_feat = POOL[teacher_feat.dim() - 2](teacher_feat, tuple(projected.shape[2:]))  # (b, C_t, *S)
    if teacher_feat.shape != projected.shape:
        raise KdlabError(
            f"SimKD compares a projected student map {tuple(projected.shape)} with a teacher map "
            f"{tuple(teacher_feat.shape)}; tap maps of one batch and rank"
        )
    return F.mse_loss(projected, teacher_feat)


def linear_classifier(teacher: nn.Module | None) -> nn.Linear:
    """The teacher's classifier, refused in one line unless it is an ``nn.Linear``."""
    if teacher is None:
        raise KdlabError(f"SimKD reuses the teacher's classifier but there is no teacher; give one ({WORKS})")
    get = getattr(teacher, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Linear):
        what = "has no get_classifier()" if head is None else f"has a {type(head).__name__} classifier, not a Linear"
        raise KdlabError(
            f"SimKD reuses the teacher's linear classifier, but the teacher ({type(teacher).__name__}) {what}; use {WORKS}"
        )
    return head


class SimKD(FeatureTerm):
    """Chen et al. (CVPR 2022): MSE between the projected last student map and the teacher's last map;
    the student predicts through the projector and the teacher's classifier (``deployable``).
    ``factor``: the projector's bottleneck is C_t // factor channels (authors' default 2; their
    README also reports 4 and 8). Taps: the last feature stage of each model (one each)."""

    def __init__(
        self,
        weight: NonNegativeFloat = 1.0,
        factor: PositiveInt = 2,
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__(weight, student_taps, teacher_taps)
        self.factor = int(factor)
        self.projector: nn.Module | None = None
        self.pool_to: tuple[int, ...] | None = None
        self._deployed: SimKDStudent | None = None  # not a submodule: the strategy holds it as its student

    def default_taps(self, student_stages, teacher_stages):
        return student_stages[-1:], teacher_stages[-1:]

    def select_taps(self, student: nn.Module, teacher: nn.Module | None) -> None:
        linear_classifier(teacher)
        for owner, model, given in (("student", student, self.student_taps), ("teacher", teacher, self.teacher_taps)):
            if not given:
                try:
                    feature_stages(model, owner)
                except KdlabError as e:
                    raise KdlabError(
                        f"SimKD taps the {owner}'s last feature map, but the {owner} ({type(model).__name__}) declares "
                        f"no feature stages; name one (method.terms.simkd.{owner}_taps=[<module path>]) or use {WORKS}"
                    ) from e
        super().select_taps(student, teacher)
        if len(self.student_taps) != 1:
            raise KdlabError(
                f"SimKD reads one map of each model, got student taps {self.student_taps} and teacher taps "
                f"{self.teacher_taps}; give one path each"
            )

    def build(self, student_feats, teacher_feats):
        (s_tap,), (t_tap,) = self.student_taps, self.teacher_taps
        fs, ft = student_feats[s_tap], teacher_feats[t_tap]
        for owner, tap, f in (("student", s_tap, fs), ("teacher", t_tap, ft)):
            if f.dim() not in (3, 4):
                raise KdlabError(
                    f"SimKD needs feature maps (b, c, L) or (b, c, h, w); {owner} tap '{tap}' gives {tuple(f.shape)}. "
                    f"Use a convolutional student and teacher ({WORKS}), or tap other modules"
                )
        if fs.dim() != ft.dim():
            raise KdlabError(
                f"SimKD pairs maps of one rank; student tap '{s_tap}' gives {tuple(fs.shape)}, "
                f"teacher tap '{t_tap}' gives {tuple(ft.shape)}"
            )
        self.projector = simkd_projector(fs.shape[1], ft.shape[1], self.factor, fs.dim() - 2)
        self.pool_to = student_pool_size(fs.shape[2:], ft.shape[2:])

    def deployable(self, student: nn.Module, teacher: nn.Module | None, input_shape: Sequence[int]) -> SimKDStudent:
        """The student as the authors evaluate it: ``SimKDStudent(student without its classifier, the
        projector, a frozen copy of the teacher's classifier)``, carrying ``kdlab_arch="simkd"`` and the
        ``kdlab_kwargs`` that rebuild it. The projector moves from this term into it (one copy of its
        weights, trained by the student's optimizer, under ``student.projector.`` in checkpoints)."""
        if self._deployed is not None:
            return self._deployed
        if self.projector is None:
            raise KdlabError("SimKD.deployable needs build() first (the strategy probes the models' shapes)")
        head = linear_classifier(teacher)
        check_pooled_classifier(teacher, self.teacher_taps[0], input_shape)
        specs = {}
        for owner, model in (("student", student), ("teacher", teacher)):
            arch = getattr(model, "kdlab_arch", None)
            if not isinstance(arch, str):
                raise KdlabError(
                    f"SimKD exports the student with its projector and the teacher's classifier (arch {ARCH}), which "
                    f"needs the {owner}'s arch: build the {owner} with kdlab.models.create_model "
                    "(it sets kdlab_arch and kdlab_kwargs)"
                )
            specs[owner] = {"arch": arch, "kwargs": plain(getattr(model, "kdlab_kwargs", None) or {})}
        model = SimKDStudent(
            headless(student),
            self.projector,
            copy.deepcopy(head),
            self.student_taps[0],
            self.pool_to,
        )
        stamp(model, specs["student"], specs["teacher"], self.factor, self.student_taps[0], self.teacher_taps[0])
        del self.projector  # now the deployable model's (a term's submodule would duplicate it in checkpoints)
        self.projector = None
        object.__setattr__(self, "_deployed", model)  # a plain reference, not a submodule
        return model

    def loss(self, out: StepOutputs) -> Tensor:
        feat_t = out.teacher_feats[self.teacher_taps[0]]
        model = self._deployed
        proj = model.pop_projection() if model is not None else None
        if proj is None:  # no deployable model (another strategy), or a forward pass in eval mode
            feat_s = out.student_feats[self.student_taps[0]]
            proj = model.project(feat_s) if model is not None else project(self.projector, feat_s, self.pool_to)
        return simkd_loss(proj, feat_t)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}"


@torch.no_grad()
def check_pooled_classifier(teacher: nn.Module, tap: str, input_shape: Sequence[int]) -> None:
    """Refuse, in one line, a teacher whose classifier does not read the global average of the map at
    ``tap`` (checked on a random batch of ``input_shape``, eval mode); the line names the first module
    whose map does feed it, when there is one."""
    head = linear_classifier(teacher)
    param = next(teacher.parameters(), None)
    device = param.device if param is not None else None
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device=device)
    taps = FeatureTaps(teacher, [tap, PRE_LOGITS], "teacher")
    pooled: list[tuple[str, Tensor]] = []  # every module's map, globally averaged, in the order they end
    handles = []
    for path, m in teacher.named_modules():
        if path and m is not head:
            handles.append(m.register_forward_hook(_PooledRecorder(pooled, path, head.in_features)))
    was_training = teacher.training
    teacher.eval()
    try:
        teacher(x)
        feats = taps.pop()
    finally:
        taps.remove()
        for h in handles:
            h.remove()
        teacher.train(was_training)
    inputs, mean = feats[PRE_LOGITS].flatten(1), _global_mean(feats[tap])

    def fits(v: Tensor) -> bool:
        return v.shape == inputs.shape and torch.allclose(
            v, inputs, rtol=1e-4, atol=1e-5 * max(1.0, inputs.abs().max().item())
        )

    if fits(mean):
        return
    better = next((p for p, v in pooled if fits(v)), None)
    hint = (
        f"set method.terms.simkd.teacher_taps=[{better}], the map it reads"
        if better
        else f"no map of the teacher is, use {WORKS}"
    )
    raise KdlabError(
        f"SimKD applies the teacher's classifier to the global average of the teacher map, but the "
        f"{type(teacher).__name__} classifier's input is not the average of tap '{tap}'; {hint}"
    )


def _global_mean(feat: Tensor) -> Tensor:
    return feat.flatten(2).mean(-1) if feat.dim() > 2 else feat


class _PooledRecorder:
    """A forward hook that appends (path, global average) of a module's map with ``channels``
    channels and more than one position."""

    def __init__(self, store: list, path: str, channels: int):
        self.store, self.path, self.channels = store, path, channels

    def __call__(self, module: nn.Module, inputs, output) -> None:
        if isinstance(output, Tensor) and output.dim() in (3, 4) and output.shape[1] == self.channels:
            if output[0, 0].numel() > 1:
                self.store.append((self.path, _global_mean(output)))
