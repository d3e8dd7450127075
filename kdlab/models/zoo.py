"""kdlab's own small networks, registered into timm so that ``timm.create_model`` builds them too.

They follow timm's model contract (``forward_features`` / ``forward_head``, ``num_classes``,
``get_classifier``, ``reset_classifier``) and take ``input_size``, the spatial size of one
input without its channels (``(40,)`` for MNIST-1D, ``(8, 8)`` for digits), because a
flattening layer needs it. 1-D or 2-D convolutions are chosen from ``len(input_size)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import register_model
from torch import Tensor, nn

#: Names registered by kdlab (the factory passes them ``input_size``).
ZOO: set[str] = set()

CONV = {1: nn.Conv1d, 2: nn.Conv2d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d}


class ClassifierMixin:
    """timm's head contract over a ``head`` attribute (an ``nn.Linear``). ``feature_taps``
    lists the module paths of the feature stages, shallow to deep (feature methods tap them)."""

    head: nn.Module
    num_features: int
    feature_taps: tuple[str, ...] = ()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class Logistic(ClassifierMixin, nn.Module):
    """Multinomial logistic regression on the flattened input (the MNIST-1D paper's linear baseline)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: Sequence[int] = (40,)):
        super().__init__()
        self.num_classes, self.num_features = num_classes, in_chans * int(torch.tensor(input_size).prod())
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)  # (b, c*L)


class ResidualBlock(nn.Sequential):
    """``x + f(x)`` for the layers ``f`` it holds (``Linear -> ReLU`` in the MLP): the parameters
    keep the plain block's names (``0.weight``, ``0.bias``), so only the forward differs."""

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


class MLP(ClassifierMixin, nn.Module):
    """The MNIST-1D paper's MLP: ``depth`` hidden layers of ``hidden`` units with ReLU, then a
    linear classifier (15210 parameters at the defaults on MNIST-1D, either form).

    ``residual=False`` (the default, kdlab's recipes): ``h_i = relu(W_i h_{i-1} + b_i)``.
    ``residual=True`` is the MNIST-1D paper's code (greydanus/mnist1d ``notebooks/models.py``,
    ``MLPBase.forward``): the first hidden layer is plain, every later one adds its input,
    ``h_i = h_{i-1} + relu(W_i h_{i-1} + b_i)`` (i >= 2), so with ``depth=2``::

        h = relu(linear1(x)); h = h + relu(linear2(h)); logits = linear3(h)

    The skip has been in ``MLPBase`` since the repository's first commit (08ff47f, 2020); the
    README's table (68%) calls the model just "MLP". Same parameters and parameter names
    either way, so a checkpoint loads into both forms.
    Taps: ``blocks.0`` ... ``blocks.{depth-1}`` (post-activation, (b, hidden); for a residual
    block, after the sum)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: Sequence[int] = (40,),
        hidden: int = 100,
        depth: int = 2,
        residual: bool = False,
    ):
        super().__init__()
        width = in_chans * int(torch.tensor(input_size).prod())
        blocks = []
        for i in range(depth):
            block = ResidualBlock if residual and i > 0 else nn.Sequential
            blocks.append(block(nn.Linear(width, hidden), nn.ReLU()))
            width = hidden
        self.blocks = nn.Sequential(*blocks)
        self.residual = residual
        self.feature_taps = tuple(f"blocks.{i}" for i in range(depth))
        self.num_classes, self.num_features = num_classes, width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(x.flatten(1))  # (b, hidden)


class ConvAct(nn.Sequential):
    """Conv -> (BatchNorm) -> ReLU (not in place: a tap on the conv or BN output, the
    pre-activation, keeps its values)."""

    def __init__(self, dims: int, cin: int, cout: int, k: int, stride: int, padding: int, bn: bool):
        layers = [CONV[dims](cin, cout, k, stride=stride, padding=padding, bias=not bn)]
        layers += [BN[dims](cout)] if bn else []
        super().__init__(*layers, nn.ReLU())


def _conv_out(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


class CNN1D(ClassifierMixin, nn.Module):
    """The MNIST-1D paper's ConvNet: three stride-2 convolutions of ``channels`` filters with
    ReLU, flattened into a linear classifier (5210 parameters at the defaults).
    Taps: ``conv1``, ``conv2``, ``conv3`` (post-activation, (b, channels, L)); pre-activation:
    the convolutions ``conv<i>.0``; no BatchNorm, so no BN before ReLU."""

    feature_taps = ("conv1", "conv2", "conv3")
    preact_taps = ("conv1.0", "conv2.0", "conv3.0")
    bn_taps = ()

    def __init__(self, num_classes: int = 10, in_chans: int = 1, input_size: Sequence[int] = (40,), channels: int = 25):
        super().__init__()
        if len(input_size) != 1:
            raise ValueError(f"cnn1d takes 1-D sequences, got input size {tuple(input_size)}")
        n = input_size[0]
        self.conv1 = ConvAct(1, in_chans, channels, 5, 2, 1, bn=False)
        self.conv2 = ConvAct(1, channels, channels, 3, 2, 1, bn=False)
        self.conv3 = ConvAct(1, channels, channels, 3, 2, 1, bn=False)
        n = _conv_out(_conv_out(_conv_out(n, 5, 2, 1), 3, 2, 1), 3, 2, 1)
        self.num_classes, self.num_features = num_classes, channels * n
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x))).flatten(1)  # (b, channels * L/8)


class ConvNet(ClassifierMixin, nn.Module):
    """A plain conv-BN-ReLU network for 1-D or 2-D inputs: one stage per entry of ``widths``,
    each after the first halving the resolution, then global average pooling and a linear
    head. Taps: ``stages.0`` ... (post-activation); pre-activation and BN before ReLU: the
    stages' BatchNorms ``stages.<i>.1``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: Sequence[int] = (40,),
        widths: Sequence[int] = (16, 32, 64),
    ):
        super().__init__()
        dims = len(input_size)
        if dims not in CONV:
            raise ValueError(f"ConvNet takes 1-D or 2-D inputs, got input size {tuple(input_size)}")
        stages, cin = [], in_chans
        for i, w in enumerate(widths):
            stages.append(ConvAct(dims, cin, w, 3, 1 if i == 0 else 2, 1, bn=True))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.feature_taps = tuple(f"stages.{i}" for i in range(len(widths)))
        self.preact_taps = self.bn_taps = tuple(f"stages.{i}.1" for i in range(len(widths)))
        self.pool = POOL[dims](1)
        self.num_classes, self.num_features = num_classes, cin
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(x)).flatten(1)  # (b, widths[-1])


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNet's stem: 3x3 conv -> BN -> ReLU (the reference's ``conv_bn``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """A depthwise-separable block (the reference's ``conv_dw``): depthwise 3x3 conv -> BN -> ReLU,
    pointwise 1x1 conv -> BN -> ReLU; indices 0-5, so ``<block>.4`` is the BN before the last ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class MobileNetV1(ClassifierMixin, nn.Module):
    """MobileNet (Howard et al. 2017, width 1.0) as the ImageNet distillation benchmarks define it
    (ResNet-50 -> MobileNet in OFD, ReviewKD, CRD/DKD's tables): clovaai/overhaul-distillation
    ``ImageNet/models/MobileNet.py``, copied by dvlab-research/ReviewKD ``ImageNet/models/mobilenet.py``
    and megvii-research/mdistiller ``mdistiller/models/imagenet/mobilenetv1.py``. ``model`` is the
    reference's ``nn.Sequential``: a stride-2 3x3 conv-BN-ReLU stem (``model.0``), 13 depthwise-separable
    blocks (``model.1`` ... ``model.13``, 32 -> 1024 channels, stride 2 at blocks 2, 4, 6 and 12), then
    global average pooling and the classifier (``fc`` there, ``head`` here: a reference checkpoint
    loads, its ``fc.`` renamed by kdlab's loader). 4,231,976 parameters with 1000 classes; PyTorch's
    default initialisation, as the references (which set none).

    Differences, none of which changes a parameter or a 224x224 forward pass: the ReLUs are not in
    place (a recorded pre-activation keeps its values) and the pooling is adaptive (the reference's
    ``AvgPool2d(7)`` covers the 7x7 map of a 224 input), so smaller inputs work too.

    Taps, as mdistiller's ``forward`` returns them (``feats["feats"]``, ``feats["preact_feats"]``):
    ``feature_taps`` the outputs of blocks 3, 5, 11 and 13 (post-activation; strides 4, 8, 16, 32;
    128, 256, 512 and 1024 channels), ``preact_taps`` the same blocks before their last ReLU, i.e.
    their last BatchNorm ``model.<i>.4``, which is also ``get_bn_before_relu()`` (``bn_taps``).
    """

    feature_taps = ("model.3", "model.5", "model.11", "model.13")
    preact_taps = ("model.3.4", "model.5.4", "model.11.4", "model.13.4")
    bn_taps = preact_taps
    #: (output channels, stride) of the 13 depthwise-separable blocks.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, input_size: Sequence[int] = (224, 224)):
        super().__init__()
        if len(input_size) != 2:
            raise ValueError(f"mobilenetv1 takes 2-D images, got input size {tuple(input_size)}")
        layers, cin = [_conv_bn(in_chans, 32, 2)], 32
        for cout, stride in self.BLOCKS:
            layers.append(_conv_dw(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.num_classes, self.num_features = num_classes, cin
        self.head = nn.Linear(cin, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x).flatten(1)  # (b, 1024)


def _entrypoint(cls, **defaults):
    """A timm entrypoint for ``cls``: accepts timm's extra arguments, refuses hub weights."""

    def build(pretrained: bool = False, **kwargs):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        if pretrained:
            raise ValueError("kdlab zoo models have no published weights; load a checkpoint instead")
        return cls(**{**defaults, **kwargs})

    return build


def _register(name: str, cls, doc: str, **defaults):
    fn = _entrypoint(cls, **defaults)
    fn.__name__, fn.__qualname__, fn.__doc__ = name, name, doc
    fn.__module__ = __name__
    register_model(fn)
    ZOO.add(name)
    globals()[name] = fn


_register("logistic", Logistic, "Logistic regression (MNIST-1D paper baseline).")
_register("mlp", MLP, "MLP, 2 hidden layers of 100 (MNIST-1D paper, 15210 params); residual=True: the paper's code.")
_register("cnn1d", CNN1D, "1-D ConvNet of the MNIST-1D paper (5210 params).")
_register("cnn_tiny", ConvNet, "conv-BN-ReLU net, widths 8/16/32 (1-D or 2-D).", widths=(8, 16, 32))
_register("cnn_small", ConvNet, "conv-BN-ReLU net, widths 16/32/64 (1-D or 2-D).", widths=(16, 32, 64))
_register("cnn_medium", ConvNet, "conv-BN-ReLU net, widths 32/64/128 (1-D or 2-D).", widths=(32, 64, 128))
_register("mobilenetv1", MobileNetV1, "MobileNet V1 (width 1.0) of the ImageNet KD benchmarks (OFD, ReviewKD, DKD).")
